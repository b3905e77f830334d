#!/usr/bin/env bash
# measure.sh: membership latencies and idle cost of real mesh agents in the namespace lab.
#
# Measures, over TRIES tries each (a fresh lab per try), and prints a Markdown table of
# median / min / max:
#   (i)   join:  start of a 3rd agent (2 already running and linked) -> listed `alive` by both
#   (ii)  crash: kill -9 of one agent of 3                          -> `dead` on both others
#   (iii) leave: SIGTERM to one agent of 3                          -> `left` on both others
#   (iv)  idle:  VmRSS and CPU % (utime+stime over CPU_WINDOW s) of each agent of a 4-agent mesh
#
# Timing: one observer process per watching host runs inside that host's namespace (started
# before the event, so `ip netns exec` costs nothing in the measurement) and long-polls the
# agent's API (GET /v1/peers?wait=V&timeout_ms=20: answers at once when the snapshot changes,
# else every 20 ms). It writes the wall-clock time at which its condition became visible. The
# result is max(observer times) - event time. Event times:
#   (i)   the agent process's creation (fork of the `lab.sh start` child, from
#         /proc/PID/stat starttime; 10 ms resolution), so lab.sh's own overhead is excluded;
#   (ii)  just before `kill -KILL PID` is sent (bash $EPOCHREALTIME);
#   (iii) just before `kill -TERM PID` is sent.
# All namespaces share one clock, so the times compare directly.
#
# Usage (root, from anywhere):
#   cargo build --release
#   MESH_BIN=target/release/mesh simulations/lab/measure.sh
# Environment: MESH_BIN (default: <repo>/target/release/mesh if built, else target/debug/mesh),
#   TRIES (5), CPU_WINDOW (10 s), WAIT_CEILING (30 s, per condition), LAB_ID (ms<pid>),
#   PYTHON (python3). Progress goes to stderr, the table to stdout.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
LAB=$SCRIPT_DIR/lab.sh

TRIES=${TRIES:-5}
CPU_WINDOW=${CPU_WINDOW:-10}       # seconds over which idle CPU is averaged
WAIT_CEILING=${WAIT_CEILING:-30}   # seconds: an observer gives up after this long
SETTLE=${SETTLE:-3}                # seconds after convergence before the idle window opens
POLL_MS=20                         # observer's longest pause between two looks
PYTHON=${PYTHON:-python3}
if [[ -z ${MESH_BIN:-} ]]; then
	if [[ -x $REPO_ROOT/target/release/mesh ]]; then MESH_BIN=$REPO_ROOT/target/release/mesh; else MESH_BIN=$REPO_ROOT/target/debug/mesh; fi
fi
[[ $MESH_BIN == /* ]] || MESH_BIN=$PWD/$MESH_BIN
[[ -x $MESH_BIN ]] || { echo "measure.sh: no agent binary at $MESH_BIN (cargo build --release)" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "measure.sh: must run as root (network namespaces)" >&2; exit 1; }
command -v "$PYTHON" >/dev/null || { echo "measure.sh: $PYTHON not found" >&2; exit 1; }

export LAB_ID=${LAB_ID:-ms$$}
WORK=$(mktemp -d "/tmp/mesh-measure-$LAB_ID.XXXXXX")
export LAB_DIR=$WORK/lab MESH_BIN
KEY=$WORK/mesh.key
OBS=$WORK/observe.py
CLK_TCK=$(getconf CLK_TCK)

log() { echo "measure: $*" >&2; }
cleanup() {
	"$LAB" down >/dev/null 2>&1 || true
	rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$MESH_BIN" key generate 2>/dev/null >"$KEY"
chmod 600 "$KEY"

# The observer: runs inside one host, watches that host's agent API.
#   observe.py OUT new STATE      -> any peer absent at the first look becomes STATE
#   observe.py OUT id PEER STATE  -> peer PEER becomes STATE
# Writes "ready" to OUT.ready after its first answer, then "<epoch seconds>" or "timeout" to OUT.
cat >"$OBS" <<'EOF'
import json, sys, time, urllib.request
out, mode = sys.argv[1], sys.argv[2]
target = sys.argv[3] if mode == "id" else None
state = sys.argv[-1]
poll_ms, ceiling = int(sys.argv[-3]), float(sys.argv[-2])
base = "http://127.0.0.1:7401/v1/peers"

def fetch(version):
    url = base if version is None else "%s?wait=%s&timeout_ms=%d" % (base, version, poll_ms)
    with urllib.request.urlopen(url, timeout=5) as r:
        body = r.read()
        seen_at = time.time()
        return json.loads(body), r.headers.get("x-mesh-version"), seen_at

deadline = time.time() + ceiling + 60
while True:  # the agent may still be starting
    try:
        rows, version, seen_at = fetch(None)
        break
    except OSError:
        if time.time() > deadline:
            open(out, "w").write("timeout\n"); sys.exit(1)
        time.sleep(poll_ms / 1000)
initial = {r["id"] for r in rows}
open(out + ".ready", "w").write("ready\n")
deadline = time.time() + ceiling
while True:
    hit = any(
        not r["self"] and r["state"] == state
        and (r["id"] == target if mode == "id" else r["id"] not in initial)
        for r in rows)
    if hit:
        open(out, "w").write("%.6f\n" % seen_at)
        break
    if time.time() > deadline:
        open(out, "w").write("timeout\n"); sys.exit(1)
    try:
        rows, version, seen_at = fetch(version)
    except OSError:
        time.sleep(poll_ms / 1000)
EOF

now() { echo "${EPOCHREALTIME/,/.}"; }

# start_observers TAG MODE [PEER] STATE HOST...: one observer per host, waits until all are ready.
OBS_FILES=()
start_observers() {
	local tag=$1 mode=$2 peer="" state k f deadline
	shift 2
	if [[ $mode == id ]]; then peer=$1; shift; fi
	state=$1
	shift
	OBS_FILES=()
	for k in "$@"; do
		f=$WORK/$tag.h$k
		rm -f "$f" "$f.ready"
		# shellcheck disable=SC2086 # $peer is empty or one word
		"$LAB" exec "$k" "$PYTHON" "$OBS" "$f" "$mode" $peer "$POLL_MS" "$WAIT_CEILING" "$state" \
			</dev/null >/dev/null 2>"$f.err" &
		OBS_FILES+=("$f")
	done
	deadline=$(($(date +%s) + 30))
	for f in "${OBS_FILES[@]}"; do
		until [[ -e $f.ready || -e $f ]]; do
			(($(date +%s) < deadline)) || { log "observer $f never became ready: $(cat "$f.err")"; return 1; }
			sleep 0.01
		done
	done
}

# finish_observers T0: waits for the observers (not in a subshell: `wait` only sees our own
# children); sets RESULT to max(time) - T0 in ms, or "timeout".
RESULT=""
finish_observers() {
	local t0=$1 f v latest=0
	wait
	for f in "${OBS_FILES[@]}"; do
		v=$(cat "$f" 2>/dev/null || echo timeout)
		if [[ $v == timeout ]]; then
			RESULT=timeout
			log "observer $f: no result; $(cat "$f.err" 2>/dev/null)"
			return
		fi
		latest=$(awk -v a="$latest" -v b="$v" 'BEGIN { print (b > a) ? b : a }')
	done
	RESULT=$(awk -v a="$latest" -v b="$t0" 'BEGIN { printf "%.0f", (a - b) * 1000 }')
}

# Epoch seconds at which process PID was created.
proc_start_epoch() {
	local pid=$1 ticks
	ticks=$(awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$pid/stat")
	"$PYTHON" -c 'import sys, time
ticks, hz = int(sys.argv[1]), int(sys.argv[2])
print("%.6f" % (time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / hz)))' "$ticks" "$CLK_TCK"
}

agent_pid() { cat "$LAB_DIR/h$1/agent.pid"; }
node_id() { "$LAB" exec "$1" "$MESH_BIN" status --json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
start_agent() { LAB_START_CHECK=0 "$LAB" start "$1" -- --mesh-key "$KEY" >/dev/null; }

# wait_alive HOST N: until HOST lists N peers alive (setup only, not measured).
wait_alive() {
	local k=$1 n=$2 deadline=$(($(date +%s) + WAIT_CEILING))
	until [[ $("$LAB" exec "$k" "$MESH_BIN" status --json 2>/dev/null |
		"$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["peers"]["alive"])' 2>/dev/null) == "$n" ]]; do
		(($(date +%s) < deadline)) || { log "h$k never saw $n peers alive"; return 1; }
		sleep 0.05
	done
}

JOIN=() CRASH=() LEAVE=() RSS=() CPU=()

measure_latencies() {
	local try=$1 t0 pid id3
	"$LAB" up 3 >/dev/null
	start_agent 1
	start_agent 2
	wait_alive 1 1 && wait_alive 2 1

	# (i) join
	start_observers join new alive 1 2
	start_agent 3
	pid=$(agent_pid 3)
	t0=$(proc_start_epoch "$pid")
	finish_observers "$t0"
	JOIN+=("$RESULT")
	id3=$(node_id 3)

	# (ii) crash
	wait_alive 3 2
	start_observers crash id "$id3" dead 1 2
	pid=$(agent_pid 3)
	t0=$(now)
	kill -KILL "$pid"
	finish_observers "$t0"
	CRASH+=("$RESULT")
	"$LAB" stop 3 KILL >/dev/null 2>&1 || true # removes the stale pid file

	# (iii) leave, after a restart with the same identity
	start_agent 3
	if ! { wait_alive 1 2 && wait_alive 2 2 && wait_alive 3 2; }; then
		log "try $try: the restarted h3 did not rejoin within ${WAIT_CEILING}s"
	fi
	start_observers leave id "$id3" left 1 2
	pid=$(agent_pid 3)
	t0=$(now)
	kill -TERM "$pid"
	finish_observers "$t0"
	LEAVE+=("$RESULT")

	log "try $try: join ${JOIN[-1]} ms, crash->dead ${CRASH[-1]} ms, sigterm->left ${LEAVE[-1]} ms"
	"$LAB" down >/dev/null
}

# Sum of utime+stime of PID, in clock ticks.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

measure_idle() {
	local try=$1 k t0 t1 line
	local -a pids=() before=()
	"$LAB" up 4 >/dev/null
	for k in 1 2 3 4; do start_agent "$k"; done
	for k in 1 2 3 4; do wait_alive "$k" 3; done
	sleep "$SETTLE" # let start-up bursts (handshakes, first gossip) pass: we want the idle cost
	for k in 1 2 3 4; do pids+=("$(agent_pid "$k")"); done
	t0=$(now)
	for k in 0 1 2 3; do before+=("$(cpu_ticks "${pids[$k]}")"); done
	sleep "$CPU_WINDOW"
	t1=$(now)
	line=""
	for k in 0 1 2 3; do
		local cpu
		cpu=$(awk -v a="${before[$k]}" -v b="$(cpu_ticks "${pids[$k]}")" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
			'BEGIN { printf "%.2f", (b - a) / hz / (t1 - t0) * 100 }')
		CPU+=("$cpu")
		RSS+=("$(rss_kib "${pids[$k]}")")
		line+=" h$((k + 1)): ${RSS[-1]} KiB ${cpu}%;"
	done
	log "try $try idle:$line"
	"$LAB" down >/dev/null
}

# stats VALUE...: "median | min | max | n" over the numeric values; timeouts counted apart.
stats() {
	local -a nums=()
	local v fails=0
	for v in "$@"; do
		if [[ $v == timeout ]]; then fails=$((fails + 1)); else nums+=("$v"); fi
	done
	if ((${#nums[@]} == 0)); then
		echo "- | - | - | 0 ($fails timeouts)"
		return
	fi
	printf '%s\n' "${nums[@]}" | sort -g | awk -v fails="$fails" '
		{ v[NR] = $1 }
		END {
			med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			extra = fails ? sprintf(" (%d timeouts)", fails) : ""
			printf "%g | %g | %g | %d%s\n", med, v[1], v[NR], NR, extra
		}'
}

log "binary $MESH_BIN, $TRIES tries, lab $LAB_ID"
for ((t = 1; t <= TRIES; t++)); do measure_latencies "$t"; done
for ((t = 1; t <= TRIES; t++)); do measure_idle "$t"; done

version=$("$MESH_BIN" --version 2>/dev/null || echo "mesh")
cat <<EOF

### mesh lab measurements

$version (\`$(basename "$(dirname "$MESH_BIN")")\` build), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $TRIES tries, observers poll every ≤ ${POLL_MS} ms (API long poll)

| measure | median | min | max | n |
|---|---|---|---|---|
| (i) start of 3rd agent → \`alive\` on both others (ms) | $(stats "${JOIN[@]}") |
| (ii) \`kill -9\` → \`dead\` on both others (ms) | $(stats "${CRASH[@]}") |
| (iii) SIGTERM → \`left\` on both others (ms) | $(stats "${LEAVE[@]}") |
| (iv) idle VmRSS, agent with 3 peers (KiB) | $(stats "${RSS[@]}") |
| (iv) idle CPU over ${CPU_WINDOW} s, agent with 3 peers (% of one core) | $(stats "${CPU[@]}") |

n counts samples: one per try for (i)–(iii), one per agent (4 per try) for (iv).
EOF
