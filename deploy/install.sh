#!/usr/bin/env bash
# install.sh: installs the mesh agent as a systemd service on a machine without the .deb.
#
#   deploy/install.sh [--binary PATH] [--join TICKET] [--no-start] [--root DIR]
#   deploy/install.sh --uninstall [--purge] [--root DIR]
#
# Installs (as root):
#   /usr/local/bin/mesh                  the binary (--binary, default: target/release/mesh of
#                                        this checkout; build it with `cargo build --release`
#                                        or deploy/cross.sh)
#   /etc/systemd/system/mesh.service     the unit (deploy/mesh.service)
#   /etc/mesh/config.toml                the example config, only when there is none yet
#   /etc/mesh/ (0755), /var/lib/mesh/ (0700, the agent's data dir)
# then enables and (re)starts the service, and with --join TICKET joins the mesh of the ticket
# (`mesh join`, once the agent answers). Running it again upgrades the binary and the unit and
# keeps the config and the data. --no-start installs only. --root DIR installs under DIR
# instead of / (for packaging and tests; nothing is started there).
#
# --uninstall stops and disables the service and removes the binary and the unit; the config
# and the data dir (the node's identity and mesh key) stay unless --purge.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
say() { echo "install.sh: $*" >&2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
binary=$here/../target/release/mesh
root=
ticket=
start=1
uninstall=0
purge=0
while [ $# -gt 0 ]; do
	case $1 in
	--binary) binary=${2:?--binary needs a path}; shift ;;
	--join) ticket=${2:?--join needs a ticket}; shift ;;
	--root) root=${2:?--root needs a directory}; shift ;;
	--no-start) start=0 ;;
	--uninstall) uninstall=1 ;;
	--purge) purge=1 ;;
	-h | --help) usage; exit 0 ;;
	*) say "unknown option $1"; usage >&2; exit 2 ;;
	esac
	shift
done
if [ -n "$root" ]; then
	mkdir -p "$root"
	root=$(cd "$root" && pwd)
	start=0
elif [ "$(id -u)" != 0 ]; then
	say "run it as root (sudo $0 ...), or with --root DIR"
	exit 1
fi
if [ "$purge" = 1 ] && [ "$uninstall" = 0 ]; then
	say "--purge goes with --uninstall"
	exit 2
fi

bin_path=$root/usr/local/bin/mesh
unit_path=$root/etc/systemd/system/mesh.service
etc=$root/etc/mesh
data=$root/var/lib/mesh
systemd=0
[ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null && systemd=1

if [ "$uninstall" = 1 ]; then
	if [ "$systemd" = 1 ]; then
		systemctl disable --now mesh.service 2>/dev/null || true
	fi
	rm -f "$bin_path" "$unit_path"
	[ "$systemd" = 1 ] && systemctl daemon-reload
	if [ "$purge" = 1 ]; then
		rm -rf "$etc" "$data"
		say "removed the agent, its config and its data (identity and mesh key)"
	else
		say "removed the agent; kept $etc and $data (--purge removes them too)"
	fi
	exit 0
fi

if [ ! -x "$binary" ]; then
	say "no binary at $binary: build it (cargo build --release, or deploy/cross.sh TARGET) or name one with --binary"
	exit 1
fi
install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system" "$etc"
install -d -m 0700 "$data"
# Through a temporary name, so a running agent's binary is replaced, never written into.
install -m 0755 "$binary" "$bin_path.new"
mv -f "$bin_path.new" "$bin_path"
install -m 0644 "$here/mesh.service" "$unit_path"
if [ -e "$etc/config.toml" ]; then
	say "kept the existing $etc/config.toml"
else
	install -m 0644 "$here/config.toml" "$etc/config.toml"
fi
say "installed $("$bin_path" --version 2>/dev/null || echo mesh) to $bin_path"

if [ "$start" = 0 ] || [ "$systemd" = 0 ]; then
	[ "$start" = 1 ] && say "systemd is not running here: start the agent with: $bin_path agent --data-dir /var/lib/mesh"
	[ -n "$ticket" ] && say "then join with: mesh join <the ticket>"
	exit 0
fi
systemctl daemon-reload
systemctl enable mesh.service >/dev/null
systemctl restart mesh.service
say "mesh.service enabled and started (journalctl -u mesh -f to follow it)"
if [ -n "$ticket" ]; then
	for _ in $(seq 1 60); do
		"$bin_path" status >/dev/null 2>&1 && break
		sleep 0.5
	done
	MESH_DATA_DIR=$data "$bin_path" join "$ticket"
fi
