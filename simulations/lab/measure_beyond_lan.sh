#!/usr/bin/env bash
# measure_beyond_lan.sh: how fast agents find and reach each other beyond one LAN segment, in
# the network-namespace lab (root). Times come from the agents' own logs (RFC 3339 timestamps),
# not from polling, so `ip netns exec` costs nothing here.
#
#   sudo MESH_BIN=target/release/mesh simulations/lab/measure_beyond_lan.sh [ROUNDS]
#
# Scenarios, each ROUNDS times (default 5), a newcomer with a fresh identity each round:
#   rendezvous   two routed subnets, no multicast between them; h1 serves the point; h2 and h3
#                run; the newcomer h4 (other subnet) is given only the point: from its first
#                listener to its last admission of h1, h2, h3 (all three linked).
#   tcp          the same with UDP blocked on h4: it links over TCP only.
#   relayed      h1 (open subnet) serves the point and a relay; h2 behind a NAT, the newcomer
#                h3 behind a symmetric NAT: from h3's first listener to h2 admitting it
#                (through h1's relay: hole punching cannot work there).
#   punched      the same with an ordinary NAT for h3: from h3's first listener to the first
#                "hole punch succeeded" between h2 and h3 (the link is direct).
set -euo pipefail

ROUNDS=${1:-5}
SCRIPT_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
LAB="$SCRIPT_DIR/lab.sh"
export LAB_ID=${LAB_ID:-mbl}
export LAB_DIR=${LAB_DIR:-/tmp/mesh-lab/$LAB_ID}
MESH_BIN=${MESH_BIN:-$SCRIPT_DIR/../../target/debug/mesh}
MESH_BIN=$(readlink -f "$MESH_BIN")
export MESH_BIN
export LAB_START_CHECK=0
KEY=$(mktemp)
trap '"$LAB" down >/dev/null 2>&1 || true; rm -f "$KEY"' EXIT
"$MESH_BIN" key generate >"$KEY" 2>/dev/null

# Seconds of the UTC day of log lines of host K matching PATTERN, one per line.
times() {
	{ grep -E "$2" "$LAB_DIR/h$1/agent.log" || true; } | awk '{print $1}' | sed 's/.*T//; s/Z$//' |
		awk -F: '{printf "%.6f\n", $1 * 3600 + $2 * 60 + $3}'
}
# Milliseconds from the first time >= START in host K's log matching PATTERN, to START.
since() {
	local start=$1 k=$2 pattern=$3
	times "$k" "$pattern" | awk -v s="$start" '$1 >= s {printf "%.0f\n", ($1 - s) * 1000; exit}'
}
point_addr() { # "--rendezvous QUIC --rendezvous TCP" of h1's point; waits for h1's API
	local i out
	for ((i = 0; i < 200; i++)); do
		if out=$("$LAB" exec 1 "$MESH_BIN" status --json 2>/dev/null |
			python3 -c 'import json,sys; print(" ".join("--rendezvous " + a for a in json.load(sys.stdin)["rendezvous_point"]["addrs"] if a.startswith("/ip4/10.77.0.1/")))' 2>/dev/null); then
			echo "$out"
			return 0
		fi
		sleep 0.05
	done
	echo "h1's API did not answer" >&2
	return 1
}
# Waits until host K's log has a line matching PATTERN after START (at most 20 s).
wait_log() {
	local start=$1 k=$2 pattern=$3 i
	for ((i = 0; i < 400; i++)); do
		[[ -n $(since "$start" "$k" "$pattern") ]] && return 0
		sleep 0.05
	done
	echo "timed out waiting for h$k: $pattern" >&2
	return 1
}
id_of() { "$LAB" exec "$1" "$MESH_BIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
median() { sort -n | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print int((a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

newcomer_round() { # K PT -> ms until K admitted everyone in NAMES
	local k=$1 pt=$2 start last=0 t name
	shift 2
	"$LAB" stop "$k" >/dev/null 2>&1 || true
	rm -rf "$LAB_DIR/h$k/data"
	: >"$LAB_DIR/h$k/agent.log"
	"$LAB" start "$k" -- --mesh-key "$KEY" --no-mdns $pt >/dev/null
	start=""
	while [[ -z $start ]]; do
		start=$(times "$k" "listening" | head -n 1)
		sleep 0.02
	done
	for name in "$@"; do
		wait_log "$start" "$k" "peer admitted.*name=$name$" || return 1
		t=$(since "$start" "$k" "peer admitted.*name=$name$")
		((t > last)) && last=$t
	done
	echo "$last"
}

scenario_rendezvous() { # tcp|udp
	"$LAB" up 4 --subnets 2 >/dev/null
	[[ $1 == udp ]] || "$LAB" block-udp 4 >/dev/null
	"$LAB" start 1 -- --mesh-key "$KEY" --no-mdns --rendezvous-server >/dev/null
	local pt r
	pt=$(point_addr)
	for k in 2 3; do "$LAB" start "$k" -- --mesh-key "$KEY" --no-mdns $pt >/dev/null; done
	sleep 2
	for ((r = 0; r < ROUNDS; r++)); do newcomer_round 4 "$pt" h1 h2 h3; done
	"$LAB" down >/dev/null
}

scenario_nat() { # hard|easy
	local natflag=--nat
	[[ $1 == easy ]] || natflag=--hard-nat
	"$LAB" up 3 --subnets 3 --nat 1 "$natflag" 2 >/dev/null
	"$LAB" start 1 -- --mesh-key "$KEY" --no-mdns --rendezvous-server --relay-server >/dev/null
	local pt r start
	pt=$(point_addr)
	"$LAB" start 2 -- --mesh-key "$KEY" --no-mdns $pt >/dev/null
	sleep 2
	for ((r = 0; r < ROUNDS; r++)); do
		"$LAB" stop 3 >/dev/null 2>&1 || true
		rm -rf "$LAB_DIR/h3/data"
		: >"$LAB_DIR/h3/agent.log"
		"$LAB" start 3 -- --mesh-key "$KEY" --no-mdns $pt >/dev/null
		start=""
		while [[ -z $start ]]; do
			start=$(times 3 "listening" | head -n 1)
			sleep 0.02
		done
		if [[ $1 == hard ]]; then
			wait_log "$start" 2 "peer admitted.*name=h3$" && since "$start" 2 "peer admitted.*name=h3$"
		else
			# Either side may log the punch (whichever ran it).
			local i t2 t3
			for ((i = 0; i < 400; i++)); do
				t2=$(since "$start" 2 "hole punch succeeded.*$(id_of 3)")
				t3=$(since "$start" 3 "hole punch succeeded")
				[[ -z $t2$t3 ]] || break
				sleep 0.05
			done
			if [[ -n $t2$t3 ]]; then printf '%s\n%s\n' "$t2" "$t3" | grep . | sort -n | head -n 1; else echo "no hole punch within 20 s" >&2; fi
		fi
		sleep 1
	done
	"$LAB" down >/dev/null
}

report() {
	local name=$1 values
	values=$(cat)
	printf '%-11s median %5s ms   (%s)\n' "$name" "$(median <<<"$values")" "$(tr '\n' ' ' <<<"$values" | sed 's/ $//')"
}

echo "agent: $MESH_BIN ($("$MESH_BIN" --version 2>/dev/null || echo '?')), $ROUNDS rounds each"
scenario_rendezvous udp | report rendezvous
scenario_rendezvous tcp | report tcp
scenario_nat hard | report relayed
scenario_nat easy | report punched
