#!/usr/bin/env bash
# cross.sh: builds mesh for a Raspberry Pi on a Debian (bookworm or later) x86_64 machine.
#
#   deploy/cross.sh TARGET [--debug] [--no-install]
#
# TARGET is one of
#   aarch64-unknown-linux-gnu        Pi 3, 4, 5 (and Zero 2) with a 64-bit OS
#   armv7-unknown-linux-gnueabihf    Pi 2, 3, 4 with the 32-bit Raspberry Pi OS
#   arm-unknown-linux-gnueabihf      Pi Zero, Zero W, 1 (ARMv6): refused, see below
#
# It installs what it needs (as root, when missing): the Debian cross compiler and C library
# for TARGET (the crypto crates aws-lc-sys and ring compile C and assembly) and the rustup
# target; then runs `cargo build --release --target TARGET` (or the dev profile with
# --debug). The binary is target/TARGET/release/mesh. --no-install only builds.
#
# ARMv6 (arm-unknown-linux-gnueabihf): Debian's armhf compiler and C library are built for
# ARMv7 (Thumb-2, VFPv3-D16): a binary linked against them runs on a Pi 2 or later and dies
# with "Illegal instruction" on a Pi Zero or 1. Building for ARMv6 needs an ARMv6 sysroot
# (Raspberry Pi OS's own toolchain), which Debian does not package, so this script refuses
# instead of producing a binary that cannot run there.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

target=${1:-}
shift || true
profile=release
install=1
for arg in "$@"; do
	case $arg in
	--debug) profile=debug ;;
	--no-install) install=0 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "cross.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
	esac
done

case $target in
aarch64-unknown-linux-gnu)
	packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
	cc=aarch64-linux-gnu-gcc
	;;
armv7-unknown-linux-gnueabihf)
	packages=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
	cc=arm-linux-gnueabihf-gcc
	;;
arm-unknown-linux-gnueabihf)
	echo "cross.sh: $target (ARMv6: Pi Zero, Zero W, 1) is not built: Debian's armhf compiler" \
		"and C library target ARMv7, so the binary would die with 'Illegal instruction' on" \
		"ARMv6; it needs Raspberry Pi OS's own ARMv6 toolchain. Use a 64-bit OS and" \
		"aarch64-unknown-linux-gnu on a Pi Zero 2 or later." >&2
	exit 3
	;;
-h | --help) usage; exit 0 ;;
*)
	echo "cross.sh: name a target (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" >&2
	exit 2
	;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$install" = 1 ]; then
	if ! command -v "$cc" >/dev/null 2>&1; then
		if [ "$(id -u)" != 0 ]; then
			echo "cross.sh: $cc is missing; as root: apt-get install ${packages[*]}" >&2
			exit 1
		fi
		echo "cross.sh: installing ${packages[*]}" >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
	fi
	if ! rustup target list --installed | grep -qx "$target"; then
		echo "cross.sh: adding the rustup target $target" >&2
		rustup target add "$target"
	fi
fi

# cargo and the cc crate read these names (target triple upper-cased, `-` as `_`).
triple=$(echo "$target" | tr 'a-z-' 'A-Z_')
export "CARGO_TARGET_${triple}_LINKER=$cc"
export "CC_${target//-/_}=$cc"
export "AR_${target//-/_}=${cc%gcc}ar"

flags=(--target "$target")
[ "$profile" = release ] && flags+=(--release)
echo "cross.sh: cargo build ${flags[*]}" >&2
cargo build "${flags[@]}"
bin=target/$target/$profile/mesh
echo "cross.sh: built $bin ($(du -h "$bin" | cut -f1))" >&2
echo "$bin"
