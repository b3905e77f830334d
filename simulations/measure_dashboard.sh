#!/usr/bin/env bash
# What the dashboard costs the agent: CPU of an idle agent (3-agent mesh on loopback, two
# services each) with no browser, then with one headless Chromium showing its dashboard, then
# the same agents' RSS. Prints one line per window; BENCHMARKS.md has the figures.
#
#   simulations/measure_dashboard.sh [BINARY] [WINDOW_S] [TRIES]
#
# BINARY defaults to target/release/mesh. Needs chromium (Debian `chromium`) for the browser
# windows; without it only the idle windows run. Loopback only; nothing leaves the machine.
set -euo pipefail
BIN=${1:-target/release/mesh}
WINDOW=${2:-30}
TRIES=${3:-3}
BIN=$(readlink -f "$BIN")
DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  rm -rf "$DIR"
}
trap cleanup EXIT

"$BIN" key generate > "$DIR/key"
base=$((20000 + RANDOM % 20000))
for i in 1 2 3; do
  peer=()
  [ "$i" -gt 1 ] && peer=(--peer "127.0.0.1:$((base + 1))")
  "$BIN" agent --name "n$i" --data-dir "$DIR/d$i" --mesh-key "$DIR/key" --no-mdns \
    --listen "127.0.0.1:$((base + i))" --api "127.0.0.1:$((base + 10 + i))" "${peer[@]}" \
    > "$DIR/log$i" 2>&1 &
  PIDS+=($!)
done
AGENT=${PIDS[0]}
API="127.0.0.1:$((base + 11))"
for _ in $(seq 100); do "$BIN" status --api "$API" >/dev/null 2>&1 && break; sleep 0.1; done
export MESH_API=$API MESH_DATA_DIR=$DIR/d1
for i in 1 2 3; do
  for _ in $(seq 100); do
    "$BIN" service add "sleeper$i" --node "n$i" -- sleep 100000 >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$BIN" service add "web$i" --node "n$i" --port auto --health http -- \
    python3 -m http.server --bind 127.0.0.1 '$PORT' >/dev/null
done
sleep 20  # settle: links, sync, first health checks

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
measure() {
  local label=$1 t0 t1
  for _ in $(seq "$TRIES"); do
    t0=$(ticks "$AGENT")
    sleep "$WINDOW"
    t1=$(ticks "$AGENT")
    awk -v l="$label" -v d=$((t1 - t0)) -v hz="$hz" -v w="$WINDOW" \
      'BEGIN { printf "%-28s %.2f %% of a core\n", l, 100 * d / hz / w }'
  done
}
measure "idle, no browser"
if command -v chromium >/dev/null; then
  chromium --headless=new --no-sandbox --disable-gpu --remote-debugging-port=0 \
    --user-data-dir="$DIR/chrome" "http://$API/" >/dev/null 2>&1 &
  CHROME=$!
  PIDS+=($CHROME)
  sleep 5
  measure "one browser open"
  kill "$CHROME"
  sleep 2
  measure "browser closed again"
fi
rss=$(awk '/VmRSS/ {print $2}' "/proc/$AGENT/status")
echo "agent RSS: $((rss / 1024)) MiB"
