#!/usr/bin/env bash
# hot-text.sh: regenerates link/hot-text.ld, the list of functions an agent keeps running
# after start-up, which the release build places together at the front of its code (see
# build.rs and src/daemon/startup_pages.rs for why).
#
# It builds a release binary with symbols, starts a 10-host lab (simulations/lab/lab.sh),
# runs host 1's agent under valgrind's callgrind, and records which functions of the binary
# ran: first everything up to a settled mesh (start-up), then 45 s of a settled mesh left
# alone (idle), then what runs from then on: the API (`peers`, `status`, a service added and
# listed), a peer crashing and coming back, a peer leaving, and the agent's own stop.
# Functions are written as patterns without the symbol hash, so the list keeps matching
# after unrelated changes; a function missing from it only costs memory, never correctness.
#
# Needs root (network namespaces), valgrind, python3; ~10 minutes.
# Usage: link/hot-text.sh   (then rebuild: cargo build --release)
set -euo pipefail
REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
OUT=$REPO/link/hot-text.ld
WORK=$(mktemp -d /tmp/mesh-hot-text.XXXXXX)
TARGET=${HOT_TEXT_TARGET_DIR:-/tmp/mesh-hot-text-target}
export LAB_ID=hottext LAB_START_CHECK=0
LAB=$REPO/simulations/lab/lab.sh
command -v valgrind >/dev/null || { echo "hot-text.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "hot-text.sh: needs root (network namespaces)" >&2; exit 1; }

echo "building a release binary with symbols in $TARGET ..." >&2
# Without the list (it may not exist yet; which functions run does not depend on the layout).
(cd "$REPO" && MESH_HOT_TEXT=0 CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR=$TARGET cargo build --release --quiet)
BIN=$TARGET/release/mesh

cat >"$WORK/wrap.sh" <<EOF
#!/bin/bash
for a in "\$@"; do if [[ \$a == h1 ]]; then
  exec valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file=$WORK/cg.%p "$BIN" "\$@"
fi; done
exec "$BIN" "\$@"
EOF
chmod +x "$WORK/wrap.sh"
export MESH_BIN=$WORK/wrap.sh
cleanup() { "$LAB" down >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
"$LAB" up 10 >/dev/null
"$BIN" key generate >"$WORK/key" 2>/dev/null
chmod 600 "$WORK/key"
echo "host 1 under callgrind: start-up ..." >&2
"$LAB" start 1 -- --mesh-key "$WORK/key" >/dev/null
sleep 25 # callgrind runs the agent ~50x slower
for k in 2 3 4 5 6 7 8 9 10; do "$LAB" start $k -- --mesh-key "$WORK/key" >/dev/null; done
sleep 40
vg=$(pgrep -f -- "--callgrind-out-file=$WORK/" | head -1)
[[ -n $vg ]] || { echo "hot-text.sh: host 1's agent is not running; see /tmp/mesh-lab/$LAB_ID/h1/agent.log" >&2; exit 1; }
callgrind_control --dump=startup "$vg" >/dev/null
callgrind_control --zero "$vg" >/dev/null
echo "idle (45 s: every periodic task of an idle agent runs at least once) ..." >&2
sleep 45
callgrind_control --dump=idle "$vg" >/dev/null
callgrind_control --zero "$vg" >/dev/null
echo "after start-up: API, a service, a crash, a restart, a leave, idle ..." >&2
H1=/tmp/mesh-lab/$LAB_ID/h1/data
for _ in 1 2 3; do
	"$LAB" exec 1 "$BIN" peers >/dev/null
	"$LAB" exec 1 "$BIN" peers --json >/dev/null
	"$LAB" exec 1 "$BIN" status >/dev/null
	"$LAB" exec 1 "$BIN" status --json >/dev/null
done
"$LAB" exec 1 env MESH_DATA_DIR="$H1" "$BIN" service add web --port auto -- python3 -m http.server '$PORT' >/dev/null || true
sleep 20
"$LAB" exec 1 "$BIN" services >/dev/null || true
"$LAB" exec 1 "$BIN" ports >/dev/null || true
"$LAB" kill 5 >/dev/null
sleep 15
"$LAB" start 5 -- --mesh-key "$WORK/key" >/dev/null
sleep 15
"$LAB" stop 6 >/dev/null
sleep 60
"$LAB" exec 1 "$BIN" peers >/dev/null
"$LAB" stop 1 >/dev/null
sleep 2

python3 "$REPO/link/hot-text.py" "$BIN" "$OUT" "$WORK"/cg.*
[[ ${KEEP:-0} == 1 ]] && echo "callgrind dumps kept in $WORK" >&2 || rm -rf "$WORK"
