#!/usr/bin/env bash
# deb.sh: builds the Debian package of mesh (cargo-deb) for this machine or a Pi.
#
#   deploy/deb.sh                              amd64 (or this machine's architecture)
#   deploy/deb.sh aarch64-unknown-linux-gnu    arm64, cross-built with deploy/cross.sh
#
# The package holds /usr/bin/mesh, the systemd unit (deploy/mesh.service with that path;
# enabled and started on install), /etc/mesh/config.toml (a conffile: your edits survive
# upgrades) and the README. /var/lib/mesh is made by systemd (StateDirectory). `dpkg --purge
# mesh` also removes /var/lib/mesh and /etc/mesh (deploy/debian/postrm). cargo-deb is
# installed with `cargo install cargo-deb` when missing. Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${1:-}

if ! cargo deb --version >/dev/null 2>&1; then
	echo "deb.sh: installing cargo-deb" >&2
	cargo install cargo-deb --locked
fi
if [ -n "$target" ]; then
	deploy/cross.sh "$target" >&2
else
	cargo build --release >&2
fi
# The package's unit runs the packaged binary.
mkdir -p target/deb-unit
sed 's|/usr/local/bin/mesh|/usr/bin/mesh|g' deploy/mesh.service >target/deb-unit/mesh.service
args=(--no-build --no-strip)
[ -n "$target" ] && args+=(--target "$target")
cargo deb "${args[@]}" | tail -n 1
