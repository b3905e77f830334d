#!/usr/bin/env bash
# measure_state.sh: replicated-state latencies and cost of real mesh agents in the namespace lab
# (a companion of measure.sh, which measures membership).
#
# Measures on 3 hosts and prints a Markdown table of median / min / max:
#   (v)   propagation: return of `POST /v1/tags` on h1 -> the new value visible in `/v1/peers`
#         on BOTH h2 and h3. CHANGES changes per lab, PROP_TRIES fresh labs.
#   (vi)  heal: h3 partitioned for PARTITION_S s while h1 (key `a`) and h3 (key `b`) each change
#         a tag every WRITE_EVERY s (plus a tag `gone` set and removed on both sides); then
#         `lab.sh heal 3` -> all three hosts hold identical documents (same heads in /v1/state,
#         same tags for every node in /v1/peers). HEAL_TRIES fresh labs.
#   (vii) cost: the sum over the 3 hosts of `sync.bytes_out` (Automerge sync message bytes)
#         and `sync.messages_out`, before / after the CHANGES changes of (v), divided by CHANGES;
#         and, for scale, the UDP bytes (QUIC, IPv4+IPv6, mDNS excluded) the hub's bridge
#         forwarded in that window minus its idle rate over IDLE_WINDOW s, per change.
#
# Timing: everything that times runs inside the hosts' namespaces, so `ip netns exec` costs
# nothing in the measurement, and uses CLOCK_MONOTONIC, which all namespaces share.
#   (v)  a driver in h1 POSTs the tag through urllib and timestamps the response; observers in
#        h2 and h3 (started before the first change) long-poll
#        GET /v1/peers?wait=V&timeout_ms=POLL_MS and timestamp each new value of h1's tag.
#        Sample = max(seen on h2, seen on h3) - POST returned. The driver waits until both have
#        seen a value, then a random 200-500 ms, before the next change. Reported as well:
#        from POST sent, and the POST round trip itself (fsync + push to peers).
#   (vi) the heal runs in a python wrapper that timestamps lab.sh's return (the nft table is
#        gone by then); one observer per host (tests/support/state_observer.py) polls
#        /v1/state + /v1/peers every OBS_POLL_MS ms and timestamps each change of what it sees.
#        Sample = the latest of the moments each host reached the final, common view - heal.
#
# Usage (root, from anywhere):
#   cargo build --release
#   simulations/lab/measure_state.sh
# Environment: MESH_BIN (default: <repo>/target/release/mesh if built, else target/debug/mesh),
#   CHANGES (20), PROP_TRIES (3), HEAL_TRIES (5), PARTITION_S (30), WRITE_EVERY (2),
#   POLL_MS (20), OBS_POLL_MS (10), IDLE_WINDOW (10), WAIT_CEILING (30 s, per condition),
#   LAB_ID (mss<pid>), PYTHON (python3), KEEP_WORK (1: keep the raw samples and agent logs).
#   Progress goes to stderr, the table to stdout.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
LAB=$SCRIPT_DIR/lab.sh
STATE_OBSERVER=$REPO_ROOT/tests/support/state_observer.py

CHANGES=${CHANGES:-20}
PROP_TRIES=${PROP_TRIES:-3}
HEAL_TRIES=${HEAL_TRIES:-5}
PARTITION_S=${PARTITION_S:-30}
WRITE_EVERY=${WRITE_EVERY:-2}
POLL_MS=${POLL_MS:-20}           # (v) observers: long-poll timeout, i.e. longest pause between looks
OBS_POLL_MS=${OBS_POLL_MS:-10}   # (vi) observers: pause between two looks
IDLE_WINDOW=${IDLE_WINDOW:-10}   # (vii) seconds of idle traffic measured for the baseline
WAIT_CEILING=${WAIT_CEILING:-30}
PYTHON=${PYTHON:-python3}
if [[ -z ${MESH_BIN:-} ]]; then
	if [[ -x $REPO_ROOT/target/release/mesh ]]; then MESH_BIN=$REPO_ROOT/target/release/mesh; else MESH_BIN=$REPO_ROOT/target/debug/mesh; fi
fi
[[ $MESH_BIN == /* ]] || MESH_BIN=$PWD/$MESH_BIN
[[ -x $MESH_BIN ]] || { echo "measure_state.sh: no agent binary at $MESH_BIN (cargo build --release)" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "measure_state.sh: must run as root (network namespaces)" >&2; exit 1; }
command -v "$PYTHON" >/dev/null || { echo "measure_state.sh: $PYTHON not found" >&2; exit 1; }
command -v nft >/dev/null || [[ -x /usr/sbin/nft ]] || { echo "measure_state.sh: nft not found (apt-get install -y nftables)" >&2; exit 1; }

export LAB_ID=${LAB_ID:-mss$$}
WORK=$(mktemp -d "/tmp/mesh-measure-$LAB_ID.XXXXXX")
export LAB_DIR=$WORK/lab MESH_BIN
KEY=$WORK/mesh.key
TOOLS=$WORK/state_tools.py

log() { echo "measure_state: $*" >&2; }
cleanup() {
	"$LAB" down >/dev/null 2>&1 || true
	if [[ ${KEEP_WORK:-} == 1 ]]; then log "kept the raw samples and agent logs in $WORK"; else rm -rf -- "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$MESH_BIN" key generate 2>/dev/null >"$KEY"
chmod 600 "$KEY"

# The python side, one file, several subcommands; all times are CLOCK_MONOTONIC seconds.
#   watch OUT PEER KEY LAST POLL_MS CEILING   (in h2/h3) long-polls /v1/peers; appends
#        "<value> <mono> <early>" to OUT for each new value of PEER's tag KEY (early: 1 if the
#        long poll answered before its timeout, i.e. it was woken by the change); stops at LAST.
#   drive OUT KEY PREFIX N CEILING SEEN...    (in h1) N times: POST KEY=PREFIX<i>, append
#        "<value> <sent> <returned>" to OUT, wait until every SEEN file lists the value.
#   converged HEAL_FILE EXPECTED CEILING OBS...  waits until every observer's last view has the
#        tags EXPECTED (JSON) and they share heads; prints the ms from the heal, or "timeout".
#   heal LAB OUT                             runs `LAB heal 3`, writes the mono time it returned.
#   propagation DRIVE SEEN...                prints one line per change: ret_ms sent_ms post_ms early
cat >"$TOOLS" <<'EOF'
import json, os, random, subprocess, sys, time, urllib.request
API = "http://127.0.0.1:7401"
mono = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)

# Changes need the agent's API token; `lab.sh exec` sets MESH_DATA_DIR to the host's data dir.
TOKEN_FILE = os.path.join(os.environ.get("MESH_DATA_DIR", ""), "api.token")

def http(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if method != "GET" and os.path.exists(TOKEN_FILE):
        headers["authorization"] = "Bearer " + open(TOKEN_FILE).read().strip()
    req = urllib.request.Request(API + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read()), r.headers.get("x-mesh-version")

def read_values(path):
    try:
        with open(path) as f:
            return {l.split()[0]: l.split() for l in f if l.strip()}
    except FileNotFoundError:
        return {}

def watch(out, peer, key, last, poll_ms, ceiling):
    poll_ms, deadline = int(poll_ms), mono() + float(ceiling)
    rows, version = http("GET", "/v1/peers")
    seen = None
    open(out + ".ready", "w").write("ready\n")
    with open(out, "a") as f:
        while mono() < deadline:
            t0 = mono()
            rows, version = http("GET", "/v1/peers?wait=%s&timeout_ms=%d" % (version, poll_ms))
            now = mono()
            value = next((r.get("tags", {}).get(key) for r in rows if r["id"] == peer), None)
            if value is not None and value != seen:
                early = 1 if now - t0 < poll_ms / 1000 * 0.8 else 0
                f.write("%s %.6f %d\n" % (value, now, early)); f.flush()
                seen = value
                if value == last:
                    return 0
    return 1

def drive(out, key, prefix, n, ceiling, *seen_files):
    with open(out, "a") as f:
        for i in range(int(n)):
            value = "%s%d" % (prefix, i)
            sent = mono()
            http("POST", "/v1/tags", {"key": key, "value": value})
            returned = mono()
            f.write("%s %.6f %.6f\n" % (value, sent, returned)); f.flush()
            deadline = returned + float(ceiling)
            while not all(value in read_values(s) for s in seen_files):
                if mono() > deadline:
                    print("drive: %s not seen within %s s" % (value, ceiling), file=sys.stderr)
                    return 1
                time.sleep(0.001)
            time.sleep(random.uniform(0.2, 0.5))
    return 0

def propagation(drive_file, *seen_files):
    seen = [read_values(s) for s in seen_files]
    for line in open(drive_file):
        value, sent, returned = line.split()
        sent, returned = float(sent), float(returned)
        if not all(value in s for s in seen):
            print("timeout timeout %.1f 0" % ((returned - sent) * 1000))
            continue
        latest = max(float(s[value][1]) for s in seen)
        early = sum(int(s[value][2]) for s in seen)
        print("%.1f %.1f %.1f %d" % ((latest - returned) * 1000, (latest - sent) * 1000,
                                     (returned - sent) * 1000, early))

def lines(path):
    out = []
    try:
        for l in open(path):
            try: out.append(json.loads(l))
            except ValueError: pass  # a line being written
    except FileNotFoundError:
        pass
    return out

def converged(heal_file, expected, ceiling, *obs):
    expected = json.loads(expected)
    deadline = mono() + float(ceiling)
    while mono() < deadline:
        views = [l[-1] for l in map(lines, obs) if l]
        if (len(views) == len(obs) and all(v.get("tags") == expected and "heads" in v for v in views)
                and all(v["heads"] == views[0]["heads"] for v in views)):
            heal = float(open(heal_file).read())
            print("%.0f" % ((max(v["mono"] for v in views) - heal) * 1000))
            return 0
        time.sleep(0.05)
    print("timeout")
    for o in obs:
        print("  %s: %s" % (o, (lines(o) or ["nothing"])[-1]), file=sys.stderr)
    return 1

def heal(lab, out):
    subprocess.run([lab, "heal", "3"], check=True, stdout=subprocess.DEVNULL)
    open(out, "w").write("%.6f\n" % mono())

cmd, args = sys.argv[1], sys.argv[2:]
sys.exit(globals()[cmd](*args) or 0)
EOF

run_mesh() { local k=$1; shift; "$LAB" exec "$k" "$MESH_BIN" "$@"; }
node_id() { run_mesh "$1" status --json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
start_agent() { LAB_START_CHECK=0 "$LAB" start "$1" -- --mesh-key "$KEY" >/dev/null; }

# wait_in_sync: until every host lists its 2 peers connected and in-sync (setup, not measured).
wait_in_sync() {
	local k deadline=$(($(date +%s) + WAIT_CEILING))
	for k in 1 2 3; do
		until run_mesh "$k" state --json 2>/dev/null | "$PYTHON" -c 'import json,sys
p = json.load(sys.stdin)["peers"]
sys.exit(0 if len(p) == 2 and all(x["connected"] and x["status"] == "in-sync" for x in p) else 1)' 2>/dev/null; do
			(($(date +%s) < deadline)) || { log "h$k: peers not connected and in-sync within ${WAIT_CEILING}s"; return 1; }
			sleep 0.05
		done
	done
}

# sync_totals: "<bytes_out> <messages_out>" summed over the 3 hosts.
sync_totals() {
	local k b=0 m=0 line
	for k in 1 2 3; do
		line=$(run_mesh "$k" state --json | "$PYTHON" -c 'import json,sys; s=json.load(sys.stdin)["sync"]; print(s["bytes_out"], s["messages_out"])')
		b=$((b + ${line% *})) m=$((m + ${line#* }))
	done
	echo "$b $m"
}

# stable_sync_totals: sync_totals once it has not moved for 1 s (trailing acks are in).
stable_sync_totals() {
	local a b deadline=$(($(date +%s) + WAIT_CEILING))
	a=$(sync_totals)
	while sleep 1; b=$(sync_totals); [[ $a != "$b" ]]; do
		a=$b
		(($(date +%s) < deadline)) || { log "sync counters never settled"; break; }
	done
	echo "$b"
}

# The hub's count of forwarded UDP bytes other than mDNS, i.e. QUIC between agents.
hub_counter_setup() {
	"$LAB" exec hub nft -f - <<-'NFT'
		table bridge mesh_measure {
			counter quic {}
			chain count_udp {
				type filter hook forward priority 0; policy accept;
				ip protocol udp udp dport != 5353 udp sport != 5353 counter name "quic"
				ip6 nexthdr udp udp dport != 5353 udp sport != 5353 counter name "quic"
			}
		}
	NFT
}
hub_bytes() { "$LAB" exec hub nft -j list counter bridge mesh_measure quic | "$PYTHON" -c 'import json,sys
print(next(o["counter"]["bytes"] for o in json.load(sys.stdin)["nftables"] if "counter" in o))'; }
now() { echo "${EPOCHREALTIME/,/.}"; }

# lab_down TAG: keeps the agents' logs as $WORK/TAG.hK.log, says if they hold warnings or
# errors (or a panic), then takes the lab down.
lab_down() {
	local tag=$1 k f n
	for k in 1 2 3; do
		f=$WORK/$tag.h$k.log
		cp "$LAB_DIR/h$k/agent.log" "$f" 2>/dev/null || continue
		n=$(grep -cE 'WARN|ERROR|panicked' "$f" || true)
		((n == 0)) || log "$tag: h$k's agent log has $n WARN/ERROR/panic lines, e.g.: $(grep -m1 -E 'WARN|ERROR|panicked' "$f" | sed 's/\x1b\[[0-9;]*m//g')"
	done
	"$LAB" down >/dev/null
}

RET=() SENT=() POST=() EARLY=0 BYTES=() MSGS=() WIRE=() HEAL=()

measure_propagation() {
	local try=$1 id1 f2 f3 drv t0 t1 w0 w1 idle_rate s0 s1 line
	"$LAB" up 3 >/dev/null
	for k in 1 2 3; do start_agent "$k"; done
	wait_in_sync
	id1=$(node_id 1)
	hub_counter_setup
	# Idle baseline of the wire counter: membership pings, anti-entropy.
	w0=$(hub_bytes) t0=$(now)
	sleep "$IDLE_WINDOW"
	w1=$(hub_bytes) t1=$(now)
	idle_rate=$(awk -v a="$w0" -v b="$w1" -v t0="$t0" -v t1="$t1" 'BEGIN { print (b - a) / (t1 - t0) }')

	f2=$WORK/prop$try.h2 f3=$WORK/prop$try.h3 drv=$WORK/prop$try.drive
	for k in 2 3; do
		local f=$WORK/prop$try.h$k
		"$LAB" exec "$k" "$PYTHON" "$TOOLS" watch "$f" "$id1" p "t$try-$((CHANGES - 1))" "$POLL_MS" $((WAIT_CEILING + CHANGES * 2)) \
			</dev/null >/dev/null 2>"$f.err" &
	done
	until [[ -e $f2.ready && -e $f3.ready ]]; do sleep 0.01; done
	s0=$(stable_sync_totals)
	w0=$(hub_bytes) t0=$(now)
	"$LAB" exec 1 "$PYTHON" "$TOOLS" drive "$drv" p "t$try-" "$CHANGES" "$WAIT_CEILING" "$f2" "$f3" </dev/null >&2
	wait
	s1=$(stable_sync_totals)
	w1=$(hub_bytes) t1=$(now)

	while read -r ret sent post early; do
		RET+=("$ret") SENT+=("$sent") POST+=("$post") EARLY=$((EARLY + early))
	done < <("$PYTHON" "$TOOLS" propagation "$drv" "$f2" "$f3")
	BYTES+=("$(awk -v a="${s0% *}" -v b="${s1% *}" -v n="$CHANGES" 'BEGIN { printf "%.0f", (b - a) / n }')")
	MSGS+=("$(awk -v a="${s0#* }" -v b="${s1#* }" -v n="$CHANGES" 'BEGIN { printf "%.1f", (b - a) / n }')")
	WIRE+=("$(awk -v a="$w0" -v b="$w1" -v t0="$t0" -v t1="$t1" -v r="$idle_rate" -v n="$CHANGES" \
		'BEGIN { printf "%.0f", ((b - a) - r * (t1 - t0)) / n }')")
	log "try $try: ${CHANGES} changes, return->both median $(stats "${RET[@]: -$CHANGES}" | cut -d'|' -f1)ms;" \
		"${BYTES[-1]} sync B/change, ${MSGS[-1]} msgs/change, ~${WIRE[-1]} UDP B/change (idle $(printf %.0f "$idle_rate") B/s)"
	lab_down "prop$try"
}

measure_heal() {
	local try=$1 ids round a="" b="" gone1="" gone3="" expected obs=() k result t_end
	"$LAB" up 3 >/dev/null
	for k in 1 2 3; do start_agent "$k"; done
	wait_in_sync
	ids=("" "$(node_id 1)" "$(node_id 2)" "$(node_id 3)")
	"$LAB" partition 3 >/dev/null
	t_end=$(($(date +%s) + PARTITION_S))
	round=0
	while (($(date +%s) < t_end)); do
		local started=$EPOCHREALTIME
		a=a$round b=b$round
		run_mesh 1 tag add "a=$a" >/dev/null
		run_mesh 3 tag add "b=$b" >/dev/null
		case $round in
		1) run_mesh 1 tag add gone=1 >/dev/null; run_mesh 3 tag add gone=3 >/dev/null; gone1=', "gone": "1"' gone3=', "gone": "3"' ;;
		4) run_mesh 1 tag rm gone >/dev/null; run_mesh 3 tag rm gone >/dev/null; gone1="" gone3="" ;;
		esac
		round=$((round + 1))
		sleep "$(awk -v s="${started/,/.}" -v n="${EPOCHREALTIME/,/.}" -v w="$WRITE_EVERY" 'BEGIN { d = w - (n - s); print (d > 0) ? d : 0 }')"
	done
	expected=$(printf '{"%s": {"a": "%s"%s}, "%s": {}, "%s": {"b": "%s"%s}}' "${ids[1]}" "$a" "$gone1" "${ids[2]}" "${ids[3]}" "$b" "$gone3")
	for k in 1 2 3; do
		obs+=("$WORK/heal$try.h$k")
		"$LAB" exec "$k" "$PYTHON" "$STATE_OBSERVER" --out "${obs[-1]}" --poll-ms "$OBS_POLL_MS" \
			--duration $((WAIT_CEILING + 30)) --stop-file "$WORK/heal$try.stop" </dev/null >/dev/null 2>"${obs[-1]}.err" &
	done
	for k in 0 1 2; do until [[ -s ${obs[$k]} ]]; do sleep 0.01; done; done
	"$PYTHON" "$TOOLS" heal "$LAB" "$WORK/heal$try.at"
	result=$("$PYTHON" "$TOOLS" converged "$WORK/heal$try.at" "$expected" "$WAIT_CEILING" "${obs[@]}") || true
	touch "$WORK/heal$try.stop"
	wait
	HEAL+=("$result")
	log "try $try: $round rounds of writes per side during ${PARTITION_S}s; heal -> converged ${result} ms"
	if [[ $result == timeout ]]; then
		for k in 1 2 3; do log "h$k agent.log tail:"; tail -n 20 "$LAB_DIR/h$k/agent.log" >&2; done
	fi
	lab_down "heal$try"
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

log "binary $MESH_BIN, lab $LAB_ID: $PROP_TRIES x $CHANGES changes, $HEAL_TRIES heals after ${PARTITION_S}s"
for ((t = 1; t <= PROP_TRIES; t++)); do measure_propagation "$t"; done
for ((t = 1; t <= HEAL_TRIES; t++)); do measure_heal "$t"; done

version=$("$MESH_BIN" --version 2>/dev/null || echo "mesh")
cat <<EOF

### mesh lab measurements: replicated state

$version (\`$(basename "$(dirname "$MESH_BIN")")\` build), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), 3 hosts

| measure | median | min | max | n |
|---|---|---|---|---|
| (v) \`POST /v1/tags\` returned on h1 → visible in \`/v1/peers\` on both h2 and h3 (ms) | $(stats "${RET[@]}") |
| (v) same, from the POST sent (ms) | $(stats "${SENT[@]}") |
| (v) the POST round trip itself: apply, fsync, push (ms) | $(stats "${POST[@]}") |
| (vi) \`lab.sh heal\` after ${PARTITION_S} s of partition with writes on both sides → identical documents on h1, h2, h3 (ms) | $(stats "${HEAL[@]}") |
| (vii) Automerge sync bytes sent per tag change, all 3 hosts (B) | $(stats "${BYTES[@]}") |
| (vii) sync messages sent per tag change, all 3 hosts | $(stats "${MSGS[@]}") |
| (vii) UDP bytes at the hub per tag change, minus the idle rate (B, approximate) | $(stats "${WIRE[@]}") |

(v): $PROP_TRIES labs × $CHANGES changes, one sample per change; observers long-poll with timeout_ms=$POLL_MS, so a sample is late by up to ~$POLL_MS ms ($EARLY of $((${#RET[@]} * 2)) sightings were answered before the poll timeout, i.e. woken by the change). (vi): one sample per lab, writes every ${WRITE_EVERY} s on h1 and h3, observers poll every ${OBS_POLL_MS} ms. (vii): one sample per lab of (v), each over its $CHANGES changes (tag value ~5 bytes); the UDP figure includes QUIC/UDP/IP headers and acks, and subtracts the idle traffic measured over ${IDLE_WINDOW} s.
EOF
