#!/usr/bin/env bash
# measure.sh: membership latencies and idle cost of real mesh agents in the namespace lab.
#
# Runs on a lab of HOSTS hosts (default 10) and prints a Markdown table of median / min / max:
#   (i)   join:  start of agent N (N-1 already running and linked)  -> `alive` on all N-1 others
#   (ii)  crash: kill -9 of agent N                                  -> `dead` on all N-1 others
#   (iii) leave: SIGTERM to agent N (restarted, same identity)       -> `left` on all N-1 others
#   (iv)  idle, fresh mesh: CPU % (utime+stime over CPU_WINDOW s), VmRSS and RssAnon of the N
#         agents, SETTLE s after all of them list each other alive (right after the join of (i))
#   (v)   idle after identity churn (the reinstalled-Pi case), CHURN_TRIES labs: on host N,
#         CHURN_IDENTITIES times start an agent with a fresh data dir (a new identity, same
#         address and name), wait until all others list it alive, stop it with CHURN_SIGNAL and
#         wait until all others list it dead (KILL) or left (TERM); then start a final fresh
#         identity there and measure as in (iv): the N-1 old agents, and the one at that address
#         apart.
# (i)-(iv) run TRIES times, one fresh lab per try.
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
# All namespaces share one clock, so the times compare directly. Nothing polls the agents
# during an idle window. CPU is the process's own utime+stime (all its threads, exited ones
# included), which stays fair on a loaded machine; latencies do not: note `uptime` with them.
#
# Usage (root, from anywhere; -h prints this text):
#   cargo build --release
#   simulations/lab/measure.sh                       # 10 hosts, 5 tries, 1 churn lab: ~10 min
#   HOSTS=4 TRIES=3 CHURN_TRIES=0 simulations/lab/measure.sh
# Environment: MESH_BIN (default: <repo>/target/release/mesh if built, else target/debug/mesh),
#   HOSTS (10, at least 3), TRIES (5), CPU_WINDOW (30 s; one clock tick of 10 ms is
#   1/CPU_WINDOW % of a core), SETTLE (5 s), WAIT_CEILING (30 s, per condition),
#   CHURN_TRIES (1; 0 skips (v)), CHURN_IDENTITIES (10), CHURN_SIGNAL (KILL or TERM),
#   THREAD_CPU (1: log the busiest threads of hosts 1 and N in each idle window),
#   POLL_MS (20: the observers' long-poll timeout), JOIN_SETTLE (0 s: wait between the N-1
#   agents' convergence and the join), LAB_ID (ms<pid>), PYTHON (python3).
#   Progress goes to stderr, the tables to stdout.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	# The comment block at the top of this file is the usage text.
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
	exit 0
fi
[[ $# -eq 0 ]] || { echo "measure.sh: no arguments (settings are environment variables); -h for help" >&2; exit 2; }

SCRIPT_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
LAB=$SCRIPT_DIR/lab.sh

HOSTS=${HOSTS:-10}
TRIES=${TRIES:-5}
CPU_WINDOW=${CPU_WINDOW:-30}       # seconds over which idle CPU is averaged (a tick = 1/30 %)
CHURN_TRIES=${CHURN_TRIES:-1}
CHURN_IDENTITIES=${CHURN_IDENTITIES:-10}
CHURN_SIGNAL=${CHURN_SIGNAL:-KILL}
THREAD_CPU=${THREAD_CPU:-0}
WAIT_CEILING=${WAIT_CEILING:-30}   # seconds: an observer gives up after this long
SETTLE=${SETTLE:-5}                # seconds after convergence before the idle window opens
JOIN_SETTLE=${JOIN_SETTLE:-0}      # seconds between the N-1 agents' convergence and the join of (i)
POLL_MS=${POLL_MS:-20}             # observer's longest pause between two looks (API long poll timeout)
PYTHON=${PYTHON:-python3}
if [[ -z ${MESH_BIN:-} ]]; then
	if [[ -x $REPO_ROOT/target/release/mesh ]]; then MESH_BIN=$REPO_ROOT/target/release/mesh; else MESH_BIN=$REPO_ROOT/target/debug/mesh; fi
fi
[[ $MESH_BIN == /* ]] || MESH_BIN=$PWD/$MESH_BIN
[[ -x $MESH_BIN ]] || { echo "measure.sh: no agent binary at $MESH_BIN (cargo build --release)" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "measure.sh: must run as root (network namespaces)" >&2; exit 1; }
command -v "$PYTHON" >/dev/null || { echo "measure.sh: $PYTHON not found" >&2; exit 1; }
[[ $HOSTS =~ ^[0-9]+$ ]] && ((HOSTS >= 3)) || { echo "measure.sh: HOSTS must be a number >= 3" >&2; exit 2; }
case $CHURN_SIGNAL in
KILL) CHURN_STATE=dead ;;
TERM) CHURN_STATE=left ;;
*) echo "measure.sh: CHURN_SIGNAL must be KILL or TERM" >&2; exit 2 ;;
esac

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
# node_id HOST: the agent's peer id, retrying while its API is not up yet.
node_id() {
	local k=$1 id deadline=$(($(date +%s) + WAIT_CEILING))
	until id=$("$LAB" exec "$k" "$MESH_BIN" status --json 2>/dev/null |
		"$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["id"])' 2>/dev/null); do
		(($(date +%s) < deadline)) || { log "h$k: no status within ${WAIT_CEILING}s"; return 1; }
		sleep 0.05
	done
	echo "$id"
}
start_agent() { LAB_START_CHECK=0 "$LAB" start "$1" -- --mesh-key "$KEY" >/dev/null; }
others() { seq 1 $((HOSTS - 1)); }
all_hosts() { seq 1 "$HOSTS"; }

# wait_alive HOST N: until HOST lists N peers alive (setup only, not measured).
wait_alive() {
	local k=$1 n=$2 deadline=$(($(date +%s) + WAIT_CEILING))
	until [[ $("$LAB" exec "$k" "$MESH_BIN" status --json 2>/dev/null |
		"$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["peers"]["alive"])' 2>/dev/null) == "$n" ]]; do
		(($(date +%s) < deadline)) || { log "h$k never saw $n peers alive"; return 1; }
		sleep 0.05
	done
}
# wait_all_alive HOST...: every listed host sees all the other listed hosts alive.
wait_all_alive() {
	local k n=$(($# - 1))
	for k in "$@"; do wait_alive "$k" "$n"; done
}

# Sum of utime+stime of PID (all threads, exited ones included), in clock ticks.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# The private part of it (heap, stacks): VmRSS also counts the pages of the executable and of
# libc that are mapped, which all agents of a machine share through the page cache.
anon_kib() { awk '/^RssAnon:/ { print $2 }' "/proc/$1/status"; }
# thread_ticks PID: "tid comm ticks" per live thread.
thread_ticks() {
	local f
	for f in /proc/"$1"/task/*/stat; do
		awk '{ c = $0; sub(/^[^(]*\(/, "", c); sub(/\).*$/, "", c); gsub(/ /, "_", c)
			t = $0; sub(/^.*\) /, "", t); split(t, a, " "); print $1, c, a[12] + a[13] }' "$f" 2>/dev/null || true
	done
}

# idle_window LABEL HOST...: sleeps SETTLE, then measures CPU % and VmRSS of each host's agent
# over CPU_WINDOW s; sets IDLE_CPU[k] and IDLE_RSS[k] (KiB) per host.
declare -A IDLE_CPU=() IDLE_RSS=() IDLE_ANON=()
idle_window() {
	local label=$1 k t0 t1 line="" tk0="" tkn=""
	shift
	local -A pid=() before=()
	sleep "$SETTLE" # let start-up bursts (handshakes, first gossip) pass: we want the idle cost
	for k in "$@"; do pid[$k]=$(agent_pid "$k"); done
	if [[ $THREAD_CPU == 1 ]]; then tk0=$(thread_ticks "${pid[1]}"); tkn=$(thread_ticks "${pid[$HOSTS]}"); fi
	t0=$(now)
	for k in "$@"; do before[$k]=$(cpu_ticks "${pid[$k]}"); done
	sleep "$CPU_WINDOW"
	t1=$(now)
	for k in "$@"; do
		IDLE_CPU[$k]=$(awk -v a="${before[$k]}" -v b="$(cpu_ticks "${pid[$k]}")" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
			'BEGIN { printf "%.3f", (b - a) / hz / (t1 - t0) * 100 }')
		IDLE_RSS[$k]=$(rss_kib "${pid[$k]}")
		IDLE_ANON[$k]=$(anon_kib "${pid[$k]}")
		line+=" h$k ${IDLE_RSS[$k]} KiB (anon ${IDLE_ANON[$k]}) ${IDLE_CPU[$k]}%;"
	done
	log "$label idle:$line"
	if [[ $THREAD_CPU == 1 ]]; then
		log "$label busiest threads of h1: $(thread_delta "$tk0" "$(thread_ticks "${pid[1]}")")"
		log "$label busiest threads of h$HOSTS: $(thread_delta "$tkn" "$(thread_ticks "${pid[$HOSTS]}")")"
	fi
}
# thread_delta BEFORE AFTER: "comm:ticks" of the threads that used CPU in between, busiest first.
thread_delta() {
	awk 'NR == FNR { b[$1] = $3; next } { d = $3 - b[$1]; if (d > 0) print d, $2 }' \
		<(echo "$1") <(echo "$2") | sort -rn | head -n 8 | awk '{ printf "%s:%d ", $2, $1 }'
}

JOIN=() CRASH=() LEAVE=() RSS=() ANON=() CPU=() CHURN_STOP=() CHURN_CPU=() CHURN_CPU_NEW=() CHURN_RSS=() CHURN_RSS_NEW=()

measure_latencies() {
	local try=$1 t0 pid idn k
	"$LAB" up "$HOSTS" >/dev/null
	for k in $(others); do start_agent "$k"; done
	# shellcheck disable=SC2046 # one word per host
	wait_all_alive $(others)
	sleep "$JOIN_SETTLE" # 0: the newcomer joins a mesh that has just formed (still syncing)

	# (i) join
	# shellcheck disable=SC2046
	start_observers join new alive $(others)
	start_agent "$HOSTS"
	pid=$(agent_pid "$HOSTS")
	t0=$(proc_start_epoch "$pid")
	finish_observers "$t0"
	JOIN+=("$RESULT")
	idn=$(node_id "$HOSTS")

	# (iv) idle, fresh mesh of HOSTS agents
	# shellcheck disable=SC2046
	wait_all_alive $(all_hosts)
	# shellcheck disable=SC2046
	idle_window "try $try" $(all_hosts)
	for k in $(all_hosts); do CPU+=("${IDLE_CPU[$k]}"); RSS+=("${IDLE_RSS[$k]}"); ANON+=("${IDLE_ANON[$k]}"); done

	# (ii) crash
	# shellcheck disable=SC2046
	start_observers crash id "$idn" dead $(others)
	pid=$(agent_pid "$HOSTS")
	t0=$(now)
	kill -KILL "$pid"
	finish_observers "$t0"
	CRASH+=("$RESULT")
	"$LAB" stop "$HOSTS" KILL >/dev/null 2>&1 || true # removes the stale pid file

	# (iii) leave, after a restart with the same identity
	start_agent "$HOSTS"
	# shellcheck disable=SC2046
	if ! wait_all_alive $(all_hosts); then
		log "try $try: the restarted h$HOSTS did not rejoin within ${WAIT_CEILING}s"
	fi
	# shellcheck disable=SC2046
	start_observers leave id "$idn" left $(others)
	pid=$(agent_pid "$HOSTS")
	t0=$(now)
	kill -TERM "$pid"
	finish_observers "$t0"
	LEAVE+=("$RESULT")

	log "try $try: join ${JOIN[-1]} ms, crash->dead ${CRASH[-1]} ms, sigterm->left ${LEAVE[-1]} ms"
	"$LAB" down >/dev/null
}

# (v): CHURN_IDENTITIES identities come and go at host N's address, then a final one stays.
measure_churn() {
	local try=$1 i k id t0 data=$LAB_DIR/h$HOSTS/data
	"$LAB" up "$HOSTS" >/dev/null
	for k in $(others); do start_agent "$k"; done
	# shellcheck disable=SC2046
	wait_all_alive $(others)
	for ((i = 1; i <= CHURN_IDENTITIES; i++)); do
		rm -rf -- "$data" # a fresh identity: the reinstalled machine
		start_agent "$HOSTS"
		id=$(node_id "$HOSTS")
		# shellcheck disable=SC2046
		start_observers churn id "$id" alive $(others)
		finish_observers "$(now)"
		[[ $RESULT != timeout ]] || log "churn $try.$i: $id not alive everywhere"
		# shellcheck disable=SC2046
		start_observers churn id "$id" "$CHURN_STATE" $(others)
		t0=$(now)
		"$LAB" stop "$HOSTS" "$CHURN_SIGNAL" >/dev/null
		finish_observers "$t0"
		CHURN_STOP+=("$RESULT")
		log "churn $try.$i: identity ${id:0:16}… $CHURN_SIGNAL -> $CHURN_STATE on all others after $RESULT ms"
	done
	rm -rf -- "$data"
	start_agent "$HOSTS"
	# shellcheck disable=SC2046
	wait_all_alive $(all_hosts)
	# shellcheck disable=SC2046
	idle_window "churn $try" $(all_hosts)
	for k in $(others); do CHURN_CPU+=("${IDLE_CPU[$k]}"); CHURN_RSS+=("${IDLE_RSS[$k]}"); done
	CHURN_CPU_NEW+=("${IDLE_CPU[$HOSTS]}")
	CHURN_RSS_NEW+=("${IDLE_RSS[$HOSTS]}")
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

log "binary $MESH_BIN, $HOSTS hosts, $TRIES tries, $CHURN_TRIES churn labs, lab $LAB_ID; load: $(uptime)"
for ((t = 1; t <= TRIES; t++)); do measure_latencies "$t"; done
for ((t = 1; t <= CHURN_TRIES; t++)); do measure_churn "$t"; done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# med_max VALUE...: "median (max)" with a unit conversion by awk expression on x.
med_max() {
	local expr=$1 unit=$2
	shift 2
	local -a nums=()
	local v
	for v in "$@"; do [[ $v == timeout ]] || nums+=("$v"); done
	((${#nums[@]})) || { echo "-"; return; }
	printf '%s\n' "${nums[@]}" | sort -g | awk -v unit="$unit" '
		function conv(x) { return '"$expr"' }
		{ v[NR] = $1 }
		END {
			med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			printf "%s%s (max %s%s)\n", conv(med), unit, conv(v[NR]), unit
		}'
}
S='sprintf("%.3f", x / 1000)'
P='sprintf("%.2f", x)'
M='sprintf("%.1f", x / 1024)'

version=$("$MESH_BIN" --version 2>/dev/null || echo "mesh")
cat <<EOF

### mesh lab measurements, $HOSTS hosts

$version (\`$(basename "$(dirname "$MESH_BIN")")\` build), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), load average at the end $LOAD_END, $TRIES tries + $CHURN_TRIES churn labs, observers poll every ≤ ${POLL_MS} ms (API long poll), idle windows of ${CPU_WINDOW} s after ${SETTLE} s

| measure | median | min | max | n |
|---|---|---|---|---|
| (i) start of agent $HOSTS → \`alive\` on all $((HOSTS - 1)) others (ms) | $(stats "${JOIN[@]}") |
| (ii) \`kill -9\` → \`dead\` on all others (ms) | $(stats "${CRASH[@]}") |
| (iii) SIGTERM → \`left\` on all others (ms) | $(stats "${LEAVE[@]}") |
| (iv) idle CPU, fresh mesh (% of one core) | $(stats "${CPU[@]}") |
| (iv) idle VmRSS, fresh mesh (KiB) | $(stats "${RSS[@]}") |
| (iv) of which anonymous (RssAnon: heap, stacks; KiB) | $(stats "${ANON[@]}") |
| (v) each churned identity: $CHURN_SIGNAL → \`$CHURN_STATE\` on all others, while earlier ones linger (ms) | $(stats "${CHURN_STOP[@]}") |
| (v) idle CPU after $CHURN_IDENTITIES identities came and went ($CHURN_SIGNAL), the $((HOSTS - 1)) old agents (%) | $(stats "${CHURN_CPU[@]}") |
| (v) same, the agent now at the churned address (%) | $(stats "${CHURN_CPU_NEW[@]}") |
| (v) idle VmRSS after the churn, old agents (KiB) | $(stats "${CHURN_RSS[@]}") |
| (v) same, the agent now at the churned address (KiB) | $(stats "${CHURN_RSS_NEW[@]}") |

n counts samples: one per try for (i)–(iii), one per identity or per agent for (v), one per agent for (iv).

| figure | mesh, median (max) |
|---|---|
| new agent listed alive by all others | $(med_max "$S" " s" "${JOIN[@]}") |
| kill -9 → dead on all others | $(med_max "$S" " s" "${CRASH[@]}") |
| graceful stop → left on all | $(med_max "$S" " s" "${LEAVE[@]}") |
| idle CPU per agent, fresh mesh | $(med_max "$P" " %" "${CPU[@]}") |
| idle CPU per agent after $CHURN_IDENTITIES identities came and went | $(med_max "$P" " %" "${CHURN_CPU[@]}" "${CHURN_CPU_NEW[@]}") |
| idle RSS per agent | $(med_max "$M" " MiB" "${RSS[@]}") |
| idle RSS per agent, anonymous part only | $(med_max "$M" " MiB" "${ANON[@]}") |
EOF
