#!/usr/bin/env bash
# measure_failover.sh: failover and partition figures of placement (issue 10) on real agents in
# the namespace lab (3 hosts), printed as a Markdown table of median / max / trials.
#
#   (i)   kill -9 of the agent running `web` (1 replica, python3 http.server, HTTP health check)
#         -> `web` healthy on another node; also split into kill -> placement-take (failure
#         detection) and take -> healthy (start + first passed health check)
#   (ii)  SIGTERM of the agent running `web` -> healthy on another node
#   (iii) `pair` (replicas = 2, same server): kill -9 of one of its two nodes -> the new copy
#         healthy on the third node
#   (iv)  partition (nftables drop at the hub) of the node running `lock` (exclusive,
#         stop_grace = "1s", `sleep <unique>`) -> `lock` running on the majority side; the
#         process table sampled every 20 ms from outside counts its copies (never 2 allowed)
#   (v)   heal of that partition: `multi` (replicas = 2, `sleep <unique>`, run on both sides
#         during the partition: 3 copies) back to exactly 2, from the first moment the three
#         documents have the same heads (polled; `mesh state --json`), and from the heal;
#         `lock` exactly 1 from the heal
# (i)-(ii) alternate on one lab, KILL_TRIALS and TERM_TRIALS times: each trial hits whichever
# node runs `web` then, and the agent is restarted (same identity) before the next; (iii) on
# the same lab; (iv)-(v) PART_TRIALS times on a fresh lab.
#
# Timing, on one machine clock (all namespaces share it): t0 is taken just before the signal
# (bash $EPOCHREALTIME) or before `lab.sh partition`; the end is the agent's own audit event
# (`mesh events --json`, at_ms): `healthy` (first passed check) or, for a service without a
# check, `spawned`; so polling costs nothing in the figures. Counts of copies come from a
# sampler in the root namespace reading /proc/*/cmdline every 20 ms (it writes each change).
#
# Usage (root, from anywhere; -h prints this text):
#   cargo build --release
#   simulations/lab/measure_failover.sh                    # 7 + 7 + 3 + 3 trials: ~4 min
#   KILL_TRIALS=5 TERM_TRIALS=5 PART_TRIALS=2 simulations/lab/measure_failover.sh
# Environment: MESH_BIN (default: <repo>/target/release/mesh if built, else target/debug/mesh),
#   KILL_TRIALS (7), TERM_TRIALS (7), REPLICA_TRIALS (3), PART_TRIALS (3), WAIT_CEILING (30 s,
#   per condition), LAB_ID (mf<pid>), PYTHON (python3). Progress goes to stderr, the table to
#   stdout.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
	exit 0
fi
[[ $# -eq 0 ]] || { echo "measure_failover.sh: no arguments (settings are environment variables); -h for help" >&2; exit 2; }

SCRIPT_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
LAB=$SCRIPT_DIR/lab.sh

KILL_TRIALS=${KILL_TRIALS:-7}
TERM_TRIALS=${TERM_TRIALS:-7}
REPLICA_TRIALS=${REPLICA_TRIALS:-3}
PART_TRIALS=${PART_TRIALS:-3}
WAIT_CEILING=${WAIT_CEILING:-30}
PYTHON=${PYTHON:-python3}
SAMPLE_MS=20 # the sampler's period: the acceptance criterion's
if [[ -z ${MESH_BIN:-} ]]; then
	if [[ -x $REPO_ROOT/target/release/mesh ]]; then MESH_BIN=$REPO_ROOT/target/release/mesh; else MESH_BIN=$REPO_ROOT/target/debug/mesh; fi
fi
[[ $MESH_BIN == /* ]] || MESH_BIN=$PWD/$MESH_BIN
[[ -x $MESH_BIN ]] || { echo "measure_failover.sh: no agent binary at $MESH_BIN (cargo build --release)" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "measure_failover.sh: must run as root (network namespaces)" >&2; exit 1; }
command -v "$PYTHON" >/dev/null || { echo "measure_failover.sh: $PYTHON not found" >&2; exit 1; }
# The interpreter itself, not a wrapper (a pyenv shim adds its own start-up to every copy's).
PY_EXE=$("$PYTHON" -c 'import sys; print(sys.executable)')

export LAB_ID=${LAB_ID:-mf$$}
WORK=$(mktemp -d "/tmp/mesh-failover-$LAB_ID.XXXXXX")
export LAB_DIR=$WORK/lab MESH_BIN
KEY=$WORK/mesh.key
Q=$WORK/q.py
SAMPLER=$WORK/sample.py
SAMPLER_PID=""

log() { echo "measure_failover: $*" >&2; }
cleanup() {
	[[ -z $SAMPLER_PID ]] || kill "$SAMPLER_PID" 2>/dev/null || true
	"$LAB" down >/dev/null 2>&1 || true
	rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$MESH_BIN" key generate 2>/dev/null >"$KEY"
chmod 600 "$KEY"

# Reads of the agents' JSON (stdin), one subcommand per question.
cat >"$Q" <<'EOF'
import json, sys
cmd, args = sys.argv[1], sys.argv[2:]
doc = json.load(sys.stdin)
if cmd == "healthy":  # SERVICE [EXCEPT_NODE...]: nodes with a healthy row, sorted
    rows = [r for r in doc if r["name"] == args[0] and r["state"] == "healthy"
            and r["node"] not in args[1:]]
    print(" ".join(sorted(r["node"] for r in rows)))
elif cmd == "running":  # SERVICE: nodes with a running row (what `copies` counts), sorted
    live = ("starting", "healthy", "unhealthy", "backoff", "stopping")
    print(" ".join(sorted(r["node"] for r in doc if r["name"] == args[0] and r["state"] in live)))
elif cmd == "ready":  # SERVICE SINCE_MS: at_ms of the first healthy (or spawned without a check)
    for e in doc["events"]:
        if e["service"] != args[0] or e["at_ms"] < int(args[1]):
            continue
        if e["kind"] == "healthy" or (e["kind"] == "spawned" and "no health check" in e["reason"]):
            print(e["at_ms"]); break
elif cmd == "event":  # SERVICE KIND SINCE_MS: at_ms and reason of the first such event
    for e in doc["events"]:
        if e["service"] == args[0] and e["kind"] == args[1] and e["at_ms"] >= int(args[2]):
            print(e["at_ms"], e["reason"]); break
elif cmd == "heads":
    print(",".join(sorted(doc["heads"])))
elif cmd == "alive":
    print(doc["peers"]["alive"])
EOF

# The sampler: counts the processes having each mark of $MARKS (space-separated; not in its
# own arguments, where it would count itself) as an argument, every SAMPLE_MS, and appends
# "<epoch seconds> <count>..." to OUT on every change (and once at start).
cat >"$SAMPLER" <<'EOF'
import os, sys, time
out, period = sys.argv[1], int(sys.argv[2]) / 1000
marks = [m.encode() for m in os.environ["MARKS"].split()]
last = None
with open(out, "a", buffering=1) as f:
    while True:
        t = time.time()
        counts = [0] * len(marks)
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                args = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")[1:]
            except OSError:
                continue
            for i, m in enumerate(marks):
                if m in args:
                    counts[i] += 1
        if counts != last:
            f.write("%.6f %s\n" % (t, " ".join(map(str, counts))))
            last = counts
        time.sleep(max(0.0, period - (time.time() - t)))
EOF

now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
m() { local k=$1; shift; "$LAB" exec "$k" "$MESH_BIN" "$@" 2>/dev/null; }
q() { "$PYTHON" "$Q" "$@" 2>/dev/null; }
agent_pid() { cat "$LAB_DIR/h$1/agent.pid"; }
start_agent() { LAB_START_CHECK=0 "$LAB" start "$1" -- --mesh-key "$KEY" >/dev/null; }
services_of() { m "$1" services --json; }
events_of() { m "$1" events --node "$2" --json -n 1000; }

# wait_for WHAT CMD...: until CMD succeeds, at most WAIT_CEILING s; 1 with a log otherwise.
wait_for() {
	local what=$1 deadline=$(($(date +%s) + WAIT_CEILING))
	shift
	until "$@"; do
		(($(date +%s) < deadline)) || { log "timed out waiting until $what"; return 1; }
		sleep 0.05
	done
}
all_alive() {
	local k
	for k in 1 2 3; do [[ $(m "$k" status --json | q alive) == 2 ]] || return 1; done
}
healthy_except() { # VIEW SERVICE EXCEPT: prints the nodes, succeeds when there is one
	local nodes
	nodes=$(services_of "$1" | q healthy "$2" "$3") || return 1
	[[ -n $nodes ]] || return 1
	echo "$nodes"
}
# copies_of DIR: live http.server processes serving DIR (its unique mark).
copies_of() { pgrep -fc -- "--directory $1\$" || true; }
gone() { ! kill -0 "$1" 2>/dev/null; }

# A python3 http.server on $PORT serving DIR (its unique mark), checked over HTTP.
http_toml() {
	mkdir -p "$2"
	cat <<EOF
[[service]]
name = "$1"
command = "$PY_EXE"
args = ["-m", "http.server", "\$PORT", "--directory", "$2"]
ports = [{}]
health = { check = "http" }
$3
EOF
}
add_toml() { # HOST FILE
	m "$1" service add -f "$2" >/dev/null || { log "h$1: mesh service add -f $2 failed"; return 1; }
}

KILL=() KILL_DETECT=() KILL_START=() TERM_=() REPL=() PART=() PART_STOP=() OVERLAP=() HEAL_CONV=() HEAL_EXACT=() HEAL_LOCK=()

# fail_over SIGNAL SERVICE: signals the agent running SERVICE (its first healthy node), waits
# until it is healthy elsewhere, records ms to the new copy's ready event; restarts the agent.
fail_over() {
	local sig=$1 svc=$2 owner k view pid t0 new ready take rest
	owner=$(healthy_except 1 "$svc" "-" | cut -d' ' -f1)
	k=${owner#h}
	view=$((k % 3 + 1))
	pid=$(agent_pid "$k")
	t0=$(now_ms)
	kill -"$sig" "$pid"
	wait_for "$svc healthy on a node other than $owner" healthy_except "$view" "$svc" "$owner" >/dev/null || return 1
	new=$(healthy_except "$view" "$svc" "$owner" | cut -d' ' -f1)
	ready=$(events_of "$view" "$new" | q ready "$svc" "$t0")
	read -r take rest < <(events_of "$view" "$new" | q event "$svc" placement-take "$t0")
	log "$sig of $owner's agent: $svc healthy on $new after $((ready - t0)) ms (take after $((take - t0)) ms: $rest)"
	RESULT=$((ready - t0))
	DETECT=$((take - t0))
	wait_for "$owner's agent exits" gone "$pid"
	"$LAB" stop "$k" KILL >/dev/null 2>&1 || true # removes the stale pid file
	start_agent "$k"
	wait_for "all alive again" all_alive
	wait_for "h$k past its start-up" supervising "$k"
}

measure_failover() {
	local t www
	"$LAB" up 3 >/dev/null
	for k in 1 2 3; do start_agent "$k"; done
	wait_for "3 agents alive" all_alive
	www=$WORK/www-web
	http_toml web "$www" 'node = "h1"' >"$WORK/web.toml"
	add_toml 1 "$WORK/web.toml"
	wait_for "web healthy" healthy_except 1 web - >/dev/null
	for ((t = 1; t <= KILL_TRIALS || t <= TERM_TRIALS; t++)); do
		if ((t <= KILL_TRIALS)); then
			fail_over KILL web
			KILL+=("$RESULT") KILL_DETECT+=("$DETECT") KILL_START+=($((RESULT - DETECT)))
			# The restarted agent stops what its killed run left (the old copy).
			wait_for "one copy of web" one_copy "$www"
		fi
		if ((t <= TERM_TRIALS)); then
			fail_over TERM web
			TERM_+=("$RESULT")
		fi
	done

	http_toml pair "$WORK/www-pair" 'replicas = 2' >"$WORK/pair.toml"
	add_toml 1 "$WORK/pair.toml"
	for ((t = 1; t <= REPLICA_TRIALS; t++)); do
		wait_for "pair healthy on two nodes" two_copies_except 1 -
		replica_trial "$t"
	done
	"$LAB" down >/dev/null
}
one_copy() { [[ $(copies_of "$1") == 1 ]]; }
# supervising HOST: the agent (re)started last in HOST is past its start-up (leftovers stopped,
# in sync with a peer or given up on it): only then does it place services, so a trial that
# would make it take one over starts after that (its API answers earlier).
supervising() {
	tac "$LAB_DIR/h$1/agent.log" 2>/dev/null | sed '/^# lab.sh:/q' |
		grep -qE 'in sync with a peer; starting services|no peer synced in time'
}
two_copies_except() { [[ $(services_of "$1" | q healthy pair "$2" | wc -w) == 2 ]]; }

replica_trial() {
	local t=$1 before victim k view pid t0 after new ready
	before=$(services_of 1 | q healthy pair)
	victim=$(cut -d' ' -f$(((t - 1) % 2 + 1)) <<<"$before")
	k=${victim#h}
	view=$((k % 3 + 1))
	pid=$(agent_pid "$k")
	t0=$(now_ms)
	kill -KILL "$pid"
	wait_for "pair healthy on two nodes other than $victim" two_copies_except "$view" "$victim"
	after=$(services_of "$view" | q healthy pair "$victim")
	for new in $after; do [[ " $before " == *" $new "* ]] || break; done
	ready=$(events_of "$view" "$new" | q ready pair "$t0")
	REPL+=($((ready - t0)))
	log "kill -9 of $victim: pair healthy on $after again after $((ready - t0)) ms (new copy on $new)"
	"$LAB" stop "$k" KILL >/dev/null 2>&1 || true
	start_agent "$k"
	wait_for "all alive again" all_alive
	wait_for "h$k past its start-up" supervising "$k"
}

# sample_range FILE FROM TO INDEX: "min max" of count INDEX (1-based) over the samples in force
# between FROM and TO (epoch seconds; the one in force at FROM counts).
sample_range() {
	awk -v from="$2" -v to="$3" -v i="$4" '
		{ t = $1 + 0; c = $(i + 1) + 0 }
		t <= from { cur = c; have = 1; next }
		t > to { exit }
		{ if (!seen) { lo = hi = (have ? cur : c); seen = 1 }
		  if (c < lo) lo = c; if (c > hi) hi = c }
		END { if (!seen) { lo = hi = cur } print lo, hi }' "$1"
}
# settled_at FILE FROM INDEX VALUE: epoch seconds from which count INDEX equals VALUE for good
# (FROM if it already did then).
settled_at() {
	awk -v from="$2" -v i="$3" -v v="$4" '
		{ t = $1 + 0; c = $(i + 1) + 0 }
		t <= from { at = (c == v) ? from : ""; next }
		{ if (c == v) { if (at == "") at = t } else at = "" }
		END { if (at != "") printf "%.3f\n", at }' "$1"
}
heads_agree() {
	local a b c
	a=$(m 1 state --json | q heads) && b=$(m 2 state --json | q heads) && c=$(m 3 state --json | q heads) || return 1
	[[ -n $a && $a == "$b" && $b == "$c" ]]
}
counts_are() { # LOCK MULTI: the sampler's last line shows these counts
	local line
	line=$(tail -n 1 "$WORK/samples" 2>/dev/null) || return 1
	[[ $(cut -d' ' -f2- <<<"$line") == "$1 $2" ]]
}

measure_partitions() {
	local t lock_mark=9$$01 multi_mark=9$$02 owner k view t0 t0s healed conv maj take ready stopped lo hi exact lexact
	"$LAB" up 3 >/dev/null
	for k in 1 2 3; do start_agent "$k"; done
	wait_for "3 agents alive" all_alive
	cat >"$WORK/part.toml" <<EOF
[[service]]
name = "lock"
command = "sleep"
args = ["$lock_mark"]
exclusive = true
stop_grace = "1s"
node = "h3"

[[service]]
name = "multi"
command = "sleep"
args = ["$multi_mark"]
replicas = 2
node = "h3"
EOF
	MARKS="$lock_mark $multi_mark" "$PY_EXE" "$SAMPLER" "$WORK/samples" "$SAMPLE_MS" 2>"$WORK/sampler.err" &
	SAMPLER_PID=$!
	add_toml 1 "$WORK/part.toml"
	for ((t = 1; t <= PART_TRIALS; t++)); do
		wait_for "one lock, two multi" counts_are 1 2
		wait_for "lock healthy" healthy_except 1 lock - >/dev/null
		owner=$(healthy_except 1 lock - | cut -d' ' -f1)
		k=${owner#h}
		view=$((k % 3 + 1))
		t0=$(now_ms)
		t0s=$(awk -v t="$t0" 'BEGIN { printf "%.3f", t / 1000 }')
		"$LAB" partition "$k" >/dev/null
		wait_for "lock runs on the majority side" healthy_except "$view" lock "$owner" >/dev/null
		maj=$(healthy_except "$view" lock "$owner" | cut -d' ' -f1)
		ready=$(events_of "$view" "$maj" | q ready lock "$t0")
		read -r stopped _ < <(events_of "$k" "$owner" | q event lock stop "$t0")
		PART+=($((ready - t0)))
		PART_STOP+=($((stopped - t0)))
		wait_for "multi on both sides (3 copies)" counts_are 1 3 || true
		healed=$(now_ms)
		"$LAB" heal "$k" >/dev/null
		conv=""
		wait_for "the documents agree" heads_agree && conv=$(now_ms)
		wait_for "one lock, two multi after the heal" counts_are 1 2
		wait_for "all alive again" all_alive
		read -r lo hi < <(sample_range "$WORK/samples" "$t0s" "$(awk -v t="$(now_ms)" 'BEGIN { printf "%.3f", t / 1000 }')" 1)
		OVERLAP+=("$hi")
		exact=$(settled_at "$WORK/samples" "$(awk -v t="$healed" 'BEGIN { printf "%.3f", t / 1000 }')" 2 2)
		lexact=$(settled_at "$WORK/samples" "$(awk -v t="$healed" 'BEGIN { printf "%.3f", t / 1000 }')" 1 1)
		[[ -n $exact && -n $lexact ]] || log "no settled count after $healed in: $(tail -n 20 "$WORK/samples" | tr '\n' ';')"
		exact=$(awk -v e="$exact" 'BEGIN { printf "%.0f", e * 1000 }')
		lexact=$(awk -v e="$lexact" 'BEGIN { printf "%.0f", e * 1000 }')
		HEAL_EXACT+=($((exact - healed)))
		HEAL_LOCK+=($((lexact - healed)))
		[[ -z $conv ]] || HEAL_CONV+=($((exact - conv)))
		log "partition of $owner: lock on $maj after $((ready - t0)) ms ($owner stopped its copy after $((stopped - t0)) ms), lock copies $lo..$hi; heal: documents agree after ${conv:+$((conv - healed))} ms, multi exactly 2 after $((exact - healed)) ms, lock exactly 1 after $((lexact - healed)) ms"
	done
	kill "$SAMPLER_PID" 2>/dev/null || true
	SAMPLER_PID=""
	"$LAB" down >/dev/null
}

# stats VALUE...: "median | max | n"
stats() {
	(($#)) || { echo "- | - | 0"; return; }
	printf '%s\n' "$@" | sort -g | awk '
		{ v[NR] = $1 }
		END {
			med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			printf "%g | %g | %d\n", med, v[NR], NR
		}'
}

log "binary $MESH_BIN, lab $LAB_ID; load: $(uptime)"
measure_failover
measure_partitions
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
version=$("$MESH_BIN" --version 2>/dev/null || echo "mesh")
cat <<EOF

### Failover in the lab, 3 hosts

$version (\`$(basename "$(dirname "$MESH_BIN")")\` build), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), load average at the end $LOAD_END

| measure (ms) | median | max | trials |
|---|---|---|---|
| (i) \`kill -9\` of the agent running \`web\` → \`web\` healthy on another node | $(stats "${KILL[@]}") |
| (i) of which kill → \`placement-take\` (failure detection) | $(stats "${KILL_DETECT[@]}") |
| (i) of which take → healthy (start, first passed HTTP check) | $(stats "${KILL_START[@]}") |
| (ii) SIGTERM of the agent running \`web\` → healthy on another node | $(stats "${TERM_[@]}") |
| (iii) \`replicas = 2\`: kill -9 of one copy's node → the new copy healthy | $(stats "${REPL[@]}") |
| (iv) exclusive, its node partitioned away → running on the majority side | $(stats "${PART[@]}") |
| (iv) of which the cut-off node stopped its copy after | $(stats "${PART_STOP[@]}") |
| (iv) most copies of the exclusive service at once (sampled every ${SAMPLE_MS} ms) | $(stats "${OVERLAP[@]}") |
| (v) heal → non-exclusive back to exactly \`replicas\` copies | $(stats "${HEAL_EXACT[@]}") |
| (v) same, from the documents' convergence (heads equal; negative: before) | $(stats "${HEAL_CONV[@]}") |
| (v) heal → exclusive exactly 1 copy | $(stats "${HEAL_LOCK[@]}") |
EOF
