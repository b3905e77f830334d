#!/usr/bin/env bash
# lab.sh: a LAN of network namespaces on one machine, for running mesh agents.
#
# Hosts are namespaces ${LAB_ID}-h1 .. ${LAB_ID}-hN, each joined by a veth pair
# (vK in the host, pK in the hub) to a bridge in the namespace ${LAB_ID}-hub: br0 for
# a single LAN, or one bridge per subnet (br0, br1, ...) with the hub routing between
# them (unicast only: no multicast routing, so mDNS stays in its subnet), optionally
# one subnet behind NAT. Nothing is created in the root namespace. See README.md.
set -euo pipefail
set -E

PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

LAB_ID=${LAB_ID:-mesh}
LAB_DIR=${LAB_DIR:-/tmp/mesh-lab/$LAB_ID}
HUB=$LAB_ID-hub
MAX_HOSTS=254
MARKER=.mesh-lab                   # marks LAB_DIR as ours, so `down` may delete it
LOSS_TABLE=mesh_lab_loss           # inet table inside a host namespace
UDP_TABLE=mesh_lab_udp             # inet table inside a host namespace (block-udp)
NAT_TABLE=mesh_lab_nat             # inet table in the hub (up --nat)
PART_PREFIX=mesh_lab_part_h        # bridge table in the hub, one per partitioned host

STOP_TIMEOUT=${LAB_STOP_TIMEOUT:-10}   # stop/kill: seconds to wait for the agent to exit
DOWN_GRACE=${LAB_DOWN_GRACE:-3}        # down: seconds between SIGTERM and SIGKILL
LINK_TIMEOUT=${LAB_LINK_TIMEOUT:-10}   # up: seconds to wait for links to come up
START_CHECK=${LAB_START_CHECK:-0.3}    # start: seconds after which the agent must still live

if [[ -d /run/netns || ! -d /var/run/netns ]]; then NETNS_DIR=/run/netns; else NETNS_DIR=/var/run/netns; fi

usage() {
	cat <<EOF
Usage: $PROG COMMAND [ARGS...]

A LAN of network namespaces for mesh agents: N hosts joined by a bridge in a
hub namespace. Host K is namespace \${LAB_ID}-hK with interface vK, addresses
10.77.0.K/24 and fd77::K/64 (+ link-local). Requires root, iproute2, nftables.

Commands:
  up N [--subnets S] [--nat S] [--hard-nat S]
                           create the hub and hosts h1..hN (1 <= N <= $MAX_HOSTS).
                           --subnets S (2..9): S subnets routed by the hub, host K
                           in subnet (K-1) mod S, addresses 10.77.S.K/24 and
                           fd77:S::K/64, router 10.77.S.254 / fd77:S::fe; unicast
                           is routed, multicast (mDNS) is not.
                           --nat S (repeatable): subnet S is behind a NAT
                           router of its own (namespace \${LAB_ID}-natS, public
                           address 10.77.0.(200+S)): masquerade, no inbound
                           connection, no IPv6 in or out.
                           --hard-nat S: the same with a random source port per
                           flow (symmetric NAT: hole punching cannot work)
  down                     kill everything running in the lab, delete its
                           namespaces and its work dir; never fails if absent
  status                   hosts, addresses, agent pids, partition/loss state
  start K [-- ARGS...]     start an agent in host K in the background:
                             \$MESH_BIN agent --data-dir \$LAB_DIR/hK/data --name hK ARGS...
                           output appended to \$LAB_DIR/hK/agent.log
  stop K [SIGNAL]          send SIGNAL (default TERM) to host K's agent and wait
                           up to ${STOP_TIMEOUT}s for it to exit (STOP/CONT: send only)
  kill K                   same as: stop K KILL
  exec K CMD [ARGS...]     run CMD inside host K (K may be 'hub'); exit code passed through
  partition K              silently drop all of host K's traffic at the hub
  heal K                   undo partition K
  loss K PCT               drop PCT% of packets on host K's link, each direction
                           (0 removes the loss); loopback is not affected
  block-udp K              drop every UDP packet on host K's link (QUIC blocked)
  unblock-udp K            undo block-udp K
  addr K [-4|-6]           print host K's IPv4 (default) or IPv6 address
  subnet K                 print host K's subnet number (0 on a single LAN)
  help, -h, --help         this text

Environment:
  LAB_ID    lab name, prefix of its namespaces (default: mesh; now: $LAB_ID)
  LAB_DIR   work dir (default: /tmp/mesh-lab/\$LAB_ID; now: $LAB_DIR)
  MESH_BIN  agent binary (default: <repo>/target/debug/mesh)
  LAB_STOP_TIMEOUT=$STOP_TIMEOUT LAB_DOWN_GRACE=$DOWN_GRACE LAB_LINK_TIMEOUT=$LINK_TIMEOUT LAB_START_CHECK=$START_CHECK
  LAB_KEEP_DIR=1  makes 'down' keep the work dir (logs, data)

Example:
  $PROG up 3 && $PROG start 1 && $PROG start 2
  $PROG exec 1 ping -c1 \$($PROG addr 2)
  $PROG partition 2; $PROG heal 2; $PROG down
EOF
}

die() {
	echo "$PROG: error: $*" >&2
	exit 1
}
usage_error() {
	echo "$PROG: error: $*" >&2
	echo "Run '$PROG -h' for usage." >&2
	exit 2
}
warn() { echo "$PROG: warning: $*" >&2; }
on_err() {
	echo "$PROG: error: command failed (exit $1) at line $2: $3" >&2
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# "1.5" -> 1500
to_ms() {
	local s=$1 i f
	[[ $s =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "not a number of seconds: '$s'"
	i=${s%%.*}
	if [[ $s == *.* ]]; then f=${s#*.}000; f=${f:0:3}; else f=000; fi
	echo $((10#$i * 1000 + 10#$f))
}
now_ms() {
	local t=${EPOCHREALTIME//[.,]/}
	echo $((t / 1000))
}

check_requirements() {
	command -v ip >/dev/null 2>&1 ||
		die "'ip' not found: install the iproute2 package (apt-get install -y iproute2)"
	command -v nft >/dev/null 2>&1 ||
		die "'nft' not found: install the nftables package (apt-get install -y nftables)"
	[[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, veths and nftables need it)"
	[[ $LAB_ID =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$ ]] ||
		die "bad LAB_ID '$LAB_ID': use 1-40 letters, digits, '_' or '-', starting with a letter or digit"
	[[ -n $LAB_DIR ]] || die "LAB_DIR is empty"
	local v
	for v in LAB_STOP_TIMEOUT=$STOP_TIMEOUT LAB_DOWN_GRACE=$DOWN_GRACE LAB_LINK_TIMEOUT=$LINK_TIMEOUT LAB_START_CHECK=$START_CHECK; do
		[[ ${v#*=} =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "${v%%=*} must be a number of seconds, got '${v#*=}'"
	done
}

# Run a command with only the network namespace switched (netlink tools, sysctl).
# Cheaper than `ip netns exec`, which also remounts /sys.
if command -v nsenter >/dev/null 2>&1; then
	in_net() {
		local ns=$1
		shift
		nsenter --net="$NETNS_DIR/$ns" -- "$@"
	}
else
	in_net() { ip netns exec "$@"; }
fi

host_ns() { echo "$LAB_ID-h$1"; }
ns_exists() { [[ -e $NETNS_DIR/$1 ]]; }
ns_inode() { stat -L -c %i "$NETNS_DIR/$1" 2>/dev/null; }

# All namespaces of this lab: hosts (numerically) then the hub.
lab_namespaces() {
	local name
	ip netns list 2>/dev/null | awk '{print $1}' | while read -r name; do
		if [[ $name =~ ^${LAB_ID}-h([0-9]+)$ ]]; then echo "${BASH_REMATCH[1]} $name"; fi
	done | sort -n | awk '{print $2}'
	ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${LAB_ID}-nat[0-9]+$" || true
	if ns_exists "$HUB"; then echo "$HUB"; fi
}
# Host numbers present in this lab, ascending.
lab_hosts() {
	local name
	ip netns list 2>/dev/null | awk '{print $1}' | while read -r name; do
		if [[ $name =~ ^${LAB_ID}-h([0-9]+)$ ]]; then echo "${BASH_REMATCH[1]}"; fi
	done | sort -n
}

require_lab() {
	ns_exists "$HUB" || die "lab '$LAB_ID' is not up (no namespace $HUB); run '$PROG up N' first"
}
# Validate a host number and that the host exists.
require_host() {
	local k=$1
	is_uint "$k" && ((10#$k >= 1)) || usage_error "host must be a number >= 1, got '$k'"
	require_lab
	ns_exists "$(host_ns $((10#$k)))" ||
		die "lab '$LAB_ID' has no host h$((10#$k)) (hosts: $(lab_hosts | tr '\n' ' ' | sed 's/ $//'))"
}

# Is PID a live process inside host K's namespace?
agent_alive() {
	local k=$1 pid=$2 state ino link
	[[ -r /proc/$pid/stat ]] || return 1
	state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null) || return 1
	[[ $state != Z && $state != X && -n $state ]] || return 1
	ino=$(ns_inode "$(host_ns "$k")") || return 1
	link=$(readlink "/proc/$pid/ns/net" 2>/dev/null) || return 1
	[[ $link == "net:[$ino]" ]]
}
proc_gone() {
	local pid=$1 state
	[[ -r /proc/$pid/stat ]] || return 0
	state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null) || return 0
	[[ $state == Z || $state == X || -z $state ]]
}
proc_stopped() {
	local state
	state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ $state == T || $state == t ]]
}
read_pidfile() {
	local f=$1 pid
	[[ -f $f ]] || return 1
	pid=$(<"$f") || return 1
	is_uint "$pid" || return 1
	echo "$pid"
}

# Sets MESH_BIN_PATH (not a function printing it: die must not run in a subshell).
resolve_mesh_bin() {
	local bin=${MESH_BIN:-$REPO_ROOT/target/debug/mesh}
	if [[ $bin == */* ]]; then
		[[ $bin == /* ]] || bin=$PWD/$bin
		[[ -f $bin && -x $bin ]] ||
			die "agent binary '$bin' not found or not executable (build it with 'cargo build', or set MESH_BIN)"
	else
		bin=$(command -v "$bin") || die "agent binary '${MESH_BIN}' not found in PATH (set MESH_BIN to a path)"
	fi
	MESH_BIN_PATH=$bin
}

# ---------------------------------------------------------------- up / down

UP_DONE=0
up_cleanup() {
	local rc=$?
	if [[ $UP_DONE -ne 1 ]]; then
		echo "$PROG: error: 'up' failed; removing the partly built lab '$LAB_ID'" >&2
		teardown >/dev/null 2>&1 || true
		exit $((rc == 0 ? 1 : rc))
	fi
}

cmd_up() {
	[[ $# -ge 1 ]] || usage_error "usage: up N [--subnets S] [--nat S] [--hard-nat S]"
	local n=$1 k ns existing subnets=1 nat="" hard="" sub
	shift
	while [[ $# -gt 0 ]]; do
		case $1 in
		--subnets)
			[[ $# -ge 2 ]] && is_uint "$2" && ((10#$2 >= 2 && 10#$2 <= 9)) ||
				usage_error "--subnets takes a number 2..9"
			subnets=$((10#$2))
			shift 2
			;;
		--nat)
			[[ $# -ge 2 ]] && is_uint "$2" || usage_error "--nat takes a subnet number"
			nat+=" $((10#$2))"
			shift 2
			;;
		--hard-nat)
			[[ $# -ge 2 ]] && is_uint "$2" || usage_error "--hard-nat takes a subnet number"
			nat+=" $((10#$2))"
			hard+=" $((10#$2))"
			shift 2
			;;
		*) usage_error "up: unknown option '$1'" ;;
		esac
	done
	is_uint "$n" && ((10#$n >= 1 && 10#$n <= MAX_HOSTS)) || usage_error "N must be 1..$MAX_HOSTS, got '$n'"
	n=$((10#$n))
	if [[ -n $nat ]]; then
		((subnets >= 2)) || usage_error "--nat needs --subnets 2 or more"
		for sub in $nat; do
			((sub >= 1 && sub < subnets)) ||
				usage_error "--nat $sub: NAT subnets are 1..$((subnets - 1)) (subnet 0 is the open one their routers sit on)"
		done
	fi

	existing=$(lab_namespaces | tr '\n' ' ')
	[[ -z $existing ]] ||
		die "lab '$LAB_ID' already exists (namespaces: ${existing% }); run 'LAB_ID=$LAB_ID $PROG down' first, or use another LAB_ID"
	if [[ -e $LAB_DIR && ! -e $LAB_DIR/$MARKER ]] && [[ -n $(ls -A "$LAB_DIR" 2>/dev/null) ]]; then
		die "LAB_DIR '$LAB_DIR' exists, is not empty and is not a lab dir; choose another LAB_DIR"
	fi

	# Creating the hub namespace is the atomic claim on this LAB_ID.
	ip netns add "$HUB" 2>/dev/null ||
		die "cannot create namespace $HUB (is lab '$LAB_ID' being created by someone else?)"
	trap up_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	# A stale dir of a previous lab with the same id (down with LAB_KEEP_DIR=1): start afresh.
	if [[ -e $LAB_DIR/$MARKER ]]; then rm -rf -- "$LAB_DIR"; fi
	mkdir -p "$LAB_DIR"
	: >"$LAB_DIR/$MARKER"
	for ((k = 1; k <= n; k++)); do
		mkdir -p "$LAB_DIR/h$k/data"
	done

	for ((k = 1; k <= n; k++)); do
		ip netns add "$(host_ns $k)"
	done

	if ((subnets == 1)); then
		# Hub: no IPv6 of its own (it only bridges), so it adds no traffic of its own.
		in_net "$HUB" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 >/dev/null
	else
		# Hub: the router between the subnets.
		in_net "$HUB" sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
			net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 >/dev/null
	fi
	# Hosts: no duplicate address detection, so IPv6 addresses are usable at once;
	# no router solicitations (there is no router).
	for ((k = 1; k <= n; k++)); do
		in_net "$(host_ns $k)" sysctl -q -w \
			net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
			net.ipv6.conf.all.router_solicitations=0 net.ipv6.conf.default.router_solicitations=0 >/dev/null
	done

	{
		echo "link set lo up"
		for ((sub = 0; sub < subnets; sub++)); do
			echo "link add br$sub type bridge stp_state 0 forward_delay 0 mcast_snooping 0"
		done
		for ((k = 1; k <= n; k++)); do
			sub=$(((k - 1) % subnets))
			# MAC 02:00:0a:4d:SS:KK mirrors 10.77.S.K, to make captures readable.
			printf 'link add p%d type veth peer name v%d address 02:00:0a:4d:%02x:%02x netns %s\n' \
				"$k" "$k" "$sub" "$k" "$(host_ns $k)"
			echo "link set p$k master br$sub"
			echo "link set p$k up"
		done
		for ((sub = 0; sub < subnets; sub++)); do
			# A NAT subnet's router is its own namespace (below); the hub only bridges it.
			if ((subnets > 1)) && [[ " $nat " != *" $sub "* ]]; then
				echo "addr add 10.77.$sub.254/24 dev br$sub"
				echo "addr add fd77:$sub::fe/64 dev br$sub nodad"
			fi
			echo "link set br$sub up"
		done
	} | ip -n "$HUB" -batch -

	for ((k = 1; k <= n; k++)); do
		ns=$(host_ns $k)
		sub=$(((k - 1) % subnets))
		{
			echo "link set lo up"
			echo "addr add 10.77.$sub.$k/24 dev v$k"
			echo "addr add fd77:$sub::$k/64 dev v$k nodad"
			echo "link set v$k up"
			# Multicast (mDNS 224.0.0.251) has no default route to follow.
			echo "route add 224.0.0.0/4 dev v$k"
			if ((subnets > 1)); then
				echo "route add default via 10.77.$sub.254 dev v$k"
				[[ " $nat " == *" $sub "* ]] || echo "route add ::/0 via fd77:$sub::fe dev v$k"
			fi
		} | ip -n "$ns" -batch -
	done
	# Each subnet in $nat sits behind a NAT router of its own, as a home network does: the
	# namespace ${LAB_ID}-natS, with 10.77.S.254 on the subnet's bridge and the "public"
	# address 10.77.0.(200+S) on subnet 0, masquerading what leaves (Linux keeps the source
	# port when it is free) and dropping every connection that starts outside. Two such NATs
	# can be hole-punched. No IPv6 leaves a NAT subnet.
	for sub in $nat; do
		local natns="$LAB_ID-nat$sub"
		ip netns add "$natns"
		in_net "$natns" sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.disable_ipv6=1 \
			net.ipv6.conf.default.disable_ipv6=1 >/dev/null
		{
			echo "link add nl$sub type veth peer name lan netns $natns"
			echo "link set nl$sub master br$sub"
			echo "link set nl$sub up"
			echo "link add nw$sub type veth peer name wan netns $natns"
			echo "link set nw$sub master br0"
			echo "link set nw$sub up"
		} | ip -n "$HUB" -batch -
		{
			echo "link set lo up"
			echo "addr add 10.77.$sub.254/24 dev lan"
			echo "addr add 10.77.0.$((200 + sub))/24 dev wan"
			echo "link set lan up"
			echo "link set wan up"
			echo "route add default via 10.77.0.254 dev wan"
		} | ip -n "$natns" -batch -
		# A hard NAT picks a random source port for every new flow: the port a member sees
		# is not the one another peer would be answered from (symmetric NAT).
		local masq=masquerade
		[[ " $hard " != *" $sub "* ]] || masq="masquerade random"
		in_net "$natns" nft -f - <<EOF
table inet $NAT_TABLE {
	chain nat_fwd {
		type filter hook forward priority 0; policy accept;
		iifname "wan" ct state established,related accept
		iifname "wan" drop
	}
	chain nat_in {
		# Unsolicited packets to the router itself are dropped too, as home routers do: one
		# accepted would hold a conntrack entry that makes masquerade pick another port for
		# the host's own packets to that peer (and hole punching then fails).
		type filter hook input priority 0; policy accept;
		iifname "wan" ct state established,related accept
		iifname "wan" drop
	}
	chain nat_post {
		type nat hook postrouting priority 100; policy accept;
		oifname "wan" $masq
	}
}
EOF
	done

	wait_links "$n"

	cat >"$LAB_DIR/lab.env" <<EOF
LAB_ID=$LAB_ID
HOSTS=$n
SUBNETS=$subnets
NAT="${nat# }"
HARD_NAT="${hard# }"
CREATED=$(date -Is)
EOF
	UP_DONE=1
	trap - EXIT INT TERM
	local layout="one LAN"
	((subnets == 1)) || layout="$subnets subnets routed by the hub"
	[[ -z $nat ]] || layout+=", behind NAT:$nat"
	[[ -z $hard ]] || layout+=" (hard:$hard)"
	echo "lab '$LAB_ID' up: $n hosts (namespaces $LAB_ID-h1..$LAB_ID-h$n, hub $HUB), $layout, dir $LAB_DIR"
}

# Wait until every vK is oper-up with a usable IPv6 link-local address and every
# bridge port forwards.
wait_links() {
	local n=$1 k deadline pending out
	deadline=$(($(now_ms) + $(to_ms "$LINK_TIMEOUT")))
	while :; do
		pending=""
		out=$(bridge -n "$HUB" link show 2>/dev/null || true)
		for ((k = 1; k <= n; k++)); do
			if ! ip -n "$(host_ns $k)" -o link show dev "v$k" 2>/dev/null | grep -q 'state UP'; then
				pending+=" h$k:link"
				continue
			fi
			if ! ip -n "$(host_ns $k)" -6 -o addr show dev "v$k" scope link 2>/dev/null |
				grep -v tentative | grep -q 'inet6 fe80'; then
				pending+=" h$k:ipv6-link-local"
				continue
			fi
			if ! grep -Eq "^[0-9]+: p$k@.* state forwarding" <<<"$out"; then
				pending+=" p$k:bridge-port"
			fi
		done
		[[ -n $pending ]] || return 0
		if (($(now_ms) > deadline)); then
			die "links not up after ${LINK_TIMEOUT}s:$pending"
		fi
		sleep 0.02
	done
}

# Kill every process in the lab's namespaces, delete them, remove LAB_DIR.
# Tolerates any half-built state. Prints a summary.
teardown() {
	local nss ns k pid f deadline ino link
	local -a pids=() alive=() skip=()
	local -A lab_inodes=()
	nss=$(lab_namespaces)

	# Never kill ourselves or our callers (e.g. '$PROG exec 1 bash' then 'down').
	pid=$$
	while is_uint "$pid" && ((pid > 1)); do
		skip+=("$pid")
		pid=$(awk '{ sub(/^.*\) /, ""); print $2 }' "/proc/$pid/stat" 2>/dev/null) || break
	done

	for ns in $nss; do
		ino=$(ns_inode "$ns") && lab_inodes[$ino]=1
		for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
			[[ " ${skip[*]} " == *" $pid "* ]] || pids+=("$pid")
		done
	done
	# Agents from pid files, in case their namespace file is already gone but
	# the process still holds the namespace (checked by inode when possible).
	for f in "$LAB_DIR"/h*/agent.pid; do
		[[ -f $f ]] || continue
		pid=$(read_pidfile "$f") || continue
		proc_gone "$pid" && continue
		link=$(readlink "/proc/$pid/ns/net" 2>/dev/null) || continue
		ino=${link#net:[}
		ino=${ino%]}
		[[ -n ${lab_inodes[$ino]:-} ]] || continue
		[[ " ${pids[*]} " == *" $pid "* ]] || pids+=("$pid")
	done

	if ((${#pids[@]})); then
		echo "  stopping processes: ${pids[*]}"
		kill -TERM "${pids[@]}" 2>/dev/null || true
		kill -CONT "${pids[@]}" 2>/dev/null || true # wake frozen ones so they see TERM
		deadline=$(($(now_ms) + $(to_ms "$DOWN_GRACE")))
		while :; do
			alive=()
			for pid in "${pids[@]}"; do proc_gone "$pid" || alive+=("$pid"); done
			((${#alive[@]})) || break
			if (($(now_ms) > deadline)); then
				kill -KILL "${alive[@]}" 2>/dev/null || true
				deadline=$(($(now_ms) + 5000))
				while :; do
					local -a still=()
					for pid in "${alive[@]}"; do proc_gone "$pid" || still+=("$pid"); done
					((${#still[@]})) || break
					(($(now_ms) <= deadline)) || {
						warn "processes still alive after SIGKILL: ${still[*]}"
						break
					}
					sleep 0.05
				done
				echo "  SIGKILLed after ${DOWN_GRACE}s: ${alive[*]}"
				break
			fi
			sleep 0.05
		done
	fi

	local failed=""
	for ns in $nss; do
		ip netns del "$ns" 2>/dev/null || failed+=" $ns"
	done
	[[ -z $nss ]] || echo "  deleted namespaces: ${nss//$'\n'/ }"

	if [[ -e $LAB_DIR ]]; then
		if [[ ${LAB_KEEP_DIR:-0} == 1 ]]; then
			rm -f "$LAB_DIR"/h*/agent.pid
			echo "  kept $LAB_DIR (LAB_KEEP_DIR=1)"
		elif [[ -e $LAB_DIR/$MARKER ]] || [[ -z $(ls -A "$LAB_DIR" 2>/dev/null) ]]; then
			rm -rf -- "$LAB_DIR"
			echo "  removed $LAB_DIR"
		else
			warn "not removing $LAB_DIR: it is not a lab dir (no $MARKER file)"
		fi
	fi
	[[ -z $failed ]] || die "could not delete namespaces:$failed"
}

cmd_down() {
	[[ $# -eq 0 ]] || usage_error "'down' takes no arguments"
	if [[ -z $(lab_namespaces) && ! -e $LAB_DIR ]]; then
		echo "lab '$LAB_ID': nothing to remove"
		return 0
	fi
	echo "lab '$LAB_ID' down:"
	teardown
}

# ---------------------------------------------------------------- agents

cmd_start() {
	[[ $# -ge 1 ]] || usage_error "'start' needs a host number: start K [-- AGENT_ARGS...]"
	local k=$1
	shift
	if [[ $# -gt 0 ]]; then
		[[ $1 == -- ]] || usage_error "unexpected argument '$1': put agent arguments after '--'"
		shift
	fi
	require_host "$k"
	k=$((10#$k))
	local ns bin hdir pidfile log pid deadline logoff
	ns=$(host_ns "$k")
	resolve_mesh_bin
	bin=$MESH_BIN_PATH
	hdir=$LAB_DIR/h$k
	pidfile=$hdir/agent.pid
	log=$hdir/agent.log
	mkdir -p "$hdir/data"

	if pid=$(read_pidfile "$pidfile"); then
		agent_alive "$k" "$pid" && die "an agent is already running in h$k (pid $pid); '$PROG stop $k' first"
		rm -f "$pidfile"
	fi

	logoff=$(stat -c %s "$log" 2>/dev/null || echo 0)
	local -a argv=("$bin" agent --data-dir "$hdir/data" --name "h$k" "$@")
	printf '# lab.sh: %s start h%d: %s\n' "$(date -Is)" "$k" "${argv[*]}" >>"$log"
	# The inner shell writes its own pid, then execs `ip netns exec`, which execs
	# the agent: the pid in the file is the agent's. setsid detaches it from our
	# terminal and process group.
	# shellcheck disable=SC2016 # expanded by the inner shell
	setsid sh -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' \
		"$pidfile" ip netns exec "$ns" "${argv[@]}" </dev/null >>"$log" 2>&1 &

	deadline=$(($(now_ms) + 5000))
	until pid=$(read_pidfile "$pidfile"); do
		(($(now_ms) <= deadline)) || die "agent in h$k did not start (no pid file after 5s); see $log"
		sleep 0.01
	done
	if [[ $(to_ms "$START_CHECK") -gt 0 ]]; then
		sleep "$START_CHECK"
		if proc_gone "$pid"; then
			rm -f "$pidfile"
			echo "$PROG: error: agent in h$k (pid $pid) exited within ${START_CHECK}s; last lines of $log:" >&2
			tail -c +$((logoff + 1)) "$log" | tail -n 20 | sed 's/^/    /' >&2
			exit 1
		fi
	fi
	echo "h$k: agent started, pid $pid, log $log"
}

cmd_stop() {
	[[ $# -ge 1 && $# -le 2 ]] || usage_error "usage: stop K [SIGNAL]"
	local k=$1 sig=${2:-TERM} pidfile pid deadline
	require_host "$k"
	k=$((10#$k))
	sig=${sig^^}
	sig=${sig#SIG}
	if is_uint "$sig"; then
		sig=$(kill -l "$sig" 2>/dev/null) || usage_error "unknown signal '$2'"
	else
		kill -l "$sig" >/dev/null 2>&1 || usage_error "unknown signal '$2'"
	fi
	[[ $sig != EXIT && $sig != 0 ]] || usage_error "unknown signal '$2'"
	pidfile=$LAB_DIR/h$k/agent.pid
	pid=$(read_pidfile "$pidfile") || die "no agent running in h$k (no pid file $pidfile)"
	if ! agent_alive "$k" "$pid"; then
		rm -f "$pidfile"
		die "the agent of h$k (pid $pid) is not running (removed the stale pid file); see $LAB_DIR/h$k/agent.log"
	fi

	kill -s "$sig" "$pid" || die "cannot send SIG$sig to pid $pid"
	case $sig in
	STOP | CONT)
		echo "h$k: sent SIG$sig to agent pid $pid"
		return 0
		;;
	esac
	# A frozen (SIGSTOPped) agent only acts on the signal once continued.
	if [[ $sig != KILL ]] && proc_stopped "$pid"; then kill -s CONT "$pid" 2>/dev/null || true; fi

	deadline=$(($(now_ms) + $(to_ms "$STOP_TIMEOUT")))
	until proc_gone "$pid"; do
		if (($(now_ms) > deadline)); then
			die "the agent of h$k (pid $pid) still runs ${STOP_TIMEOUT}s after SIG$sig; try '$PROG kill $k'"
		fi
		sleep 0.02
	done
	rm -f "$pidfile"
	echo "h$k: agent pid $pid exited after SIG$sig"
}

cmd_exec() {
	[[ $# -ge 2 ]] || usage_error "usage: exec K CMD [ARGS...]"
	local k=$1 ns
	shift
	if [[ $k == hub ]]; then
		require_lab
		ns=$HUB
	else
		require_host "$k"
		ns=$(host_ns $((10#$k)))
	fi
	trap - ERR
	# The host's data dir: where `mesh` finds the agent's API token for state changes.
	[[ $k == hub ]] || export MESH_DATA_DIR="$LAB_DIR/h$((10#$k))/data"
	exec ip netns exec "$ns" "$@"
}

# ---------------------------------------------------------------- network faults

cmd_partition() {
	[[ $# -eq 1 ]] || usage_error "usage: partition K"
	local k=$1
	require_host "$k"
	k=$((10#$k))
	if in_net "$HUB" nft list table bridge "$PART_PREFIX$k" >/dev/null 2>&1; then
		echo "h$k: already partitioned"
		return 0
	fi
	in_net "$HUB" nft -f - <<EOF
table bridge $PART_PREFIX$k {
	chain pfwd {
		type filter hook forward priority -200; policy accept;
		iifname "p$k" drop
		oifname "p$k" drop
	}
	chain pin {
		type filter hook input priority -200; policy accept;
		iifname "p$k" drop
	}
	chain pout {
		type filter hook output priority -200; policy accept;
		oifname "p$k" drop
	}
}
EOF
	echo "h$k: partitioned (all its frames dropped at the hub)"
}

cmd_heal() {
	[[ $# -eq 1 ]] || usage_error "usage: heal K"
	local k=$1
	require_host "$k"
	k=$((10#$k))
	if ! in_net "$HUB" nft list table bridge "$PART_PREFIX$k" >/dev/null 2>&1; then
		echo "h$k: not partitioned"
		return 0
	fi
	in_net "$HUB" nft delete table bridge "$PART_PREFIX$k"
	echo "h$k: healed"
}

cmd_loss() {
	[[ $# -eq 2 ]] || usage_error "usage: loss K PCT"
	local k=$1 pct=$2 ns
	require_host "$k"
	k=$((10#$k))
	is_uint "$pct" && ((10#$pct <= 100)) || usage_error "PCT must be an integer 0..100, got '$pct'"
	pct=$((10#$pct))
	ns=$(host_ns "$k")
	if ((pct == 0)); then
		if in_net "$ns" nft list table inet "$LOSS_TABLE" >/dev/null 2>&1; then
			in_net "$ns" nft delete table inet "$LOSS_TABLE"
		fi
		echo "h$k: no loss"
		return 0
	fi
	# add+delete+define in one transaction: replaces any previous loss atomically.
	in_net "$ns" nft -f - <<EOF
add table inet $LOSS_TABLE
delete table inet $LOSS_TABLE
table inet $LOSS_TABLE {
	chain loss_rx {
		type filter hook input priority -300; policy accept;
		iifname "v$k" numgen random mod 100 < $pct drop
	}
	chain loss_tx {
		type filter hook output priority -300; policy accept;
		oifname "v$k" numgen random mod 100 < $pct drop
	}
}
EOF
	echo "h$k: ${pct}% loss on v$k, each direction"
}

# ---------------------------------------------------------------- info

cmd_addr() {
	[[ $# -ge 1 && $# -le 2 ]] || usage_error "usage: addr K [-4|-6]"
	local k=$1 fam=${2:--4}
	require_host "$k"
	k=$((10#$k))
	case $fam in
	-4) echo "10.77.$(host_subnet "$k").$k" ;;
	-6) echo "fd77:$(host_subnet "$k")::$k" ;;
	*) usage_error "addr: unknown option '$fam' (use -4 or -6)" ;;
	esac
}

# The number of subnets of the lab (1: one LAN), from its lab.env.
lab_subnets() {
	local v
	v=$(sed -n 's/^SUBNETS=//p' "$LAB_DIR/lab.env" 2>/dev/null || true)
	if is_uint "${v:-}"; then echo "$v"; else echo 1; fi
}
host_subnet() { echo $((($1 - 1) % $(lab_subnets))); }

cmd_subnet() {
	[[ $# -eq 1 ]] || usage_error "usage: subnet K"
	require_host "$1"
	host_subnet $((10#$1))
}

cmd_block_udp() {
	[[ $# -eq 2 ]] || usage_error "usage: block-udp K | unblock-udp K"
	local k=$2 ns
	require_host "$k"
	k=$((10#$k))
	ns=$(host_ns "$k")
	if [[ $1 == unblock ]]; then
		if in_net "$ns" nft list table inet "$UDP_TABLE" >/dev/null 2>&1; then
			in_net "$ns" nft delete table inet "$UDP_TABLE"
		fi
		echo "h$k: UDP passes"
		return 0
	fi
	in_net "$ns" nft -f - <<EOF
add table inet $UDP_TABLE
delete table inet $UDP_TABLE
table inet $UDP_TABLE {
	chain udp_rx {
		type filter hook input priority -300; policy accept;
		iifname "v$k" meta l4proto udp drop
	}
	chain udp_tx {
		type filter hook output priority -300; policy accept;
		oifname "v$k" meta l4proto udp drop
	}
}
EOF
	echo "h$k: UDP blocked on v$k (QUIC cannot pass)"
}

cmd_status() {
	[[ $# -eq 0 ]] || usage_error "'status' takes no arguments"
	local hosts k ns pid agent net v4 v6 parts loss
	hosts=$(lab_hosts)
	if ! ns_exists "$HUB" && [[ -z $hosts ]]; then
		die "lab '$LAB_ID' is not up"
	fi
	ns_exists "$HUB" || warn "hub namespace $HUB is missing: the lab is half-built; run '$PROG down'"
	echo "lab '$LAB_ID': $(echo "$hosts" | grep -c . || true) hosts, dir $LAB_DIR"
	parts=$(in_net "$HUB" nft list tables bridge 2>/dev/null || true)
	printf '%-5s %-14s %-12s %-10s %-18s %s\n' HOST NETNS IPV4 IPV6 AGENT NET
	for k in $hosts; do
		ns=$(host_ns "$k")
		v4=$(ip -n "$ns" -4 -o addr show dev "v$k" 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1 || true)
		v6=$(ip -n "$ns" -6 -o addr show dev "v$k" scope global 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1 || true)
		agent=-
		if pid=$(read_pidfile "$LAB_DIR/h$k/agent.pid"); then
			if agent_alive "$k" "$pid"; then
				agent="$pid running"
				proc_stopped "$pid" && agent="$pid frozen"
			else
				agent="$pid dead"
			fi
		fi
		net=""
		grep -qw "$PART_PREFIX$k" <<<"$parts" && net+="partitioned "
		loss=$(in_net "$ns" nft list table inet "$LOSS_TABLE" 2>/dev/null |
			grep -o 'mod 100 < [0-9]*' | head -n1 | awk '{print $4}' || true)
		[[ -z $loss ]] || net+="loss ${loss}% "
		if in_net "$ns" nft list table inet "$UDP_TABLE" >/dev/null 2>&1; then net+="udp-blocked "; fi
		net=${net% }
		printf '%-5s %-14s %-12s %-10s %-18s %s\n' "h$k" "$ns" "${v4:--}" "${v6:--}" "$agent" "${net:-ok}"
	done
}

# ---------------------------------------------------------------- main

main() {
	[[ $# -ge 1 ]] || {
		usage >&2
		exit 2
	}
	local cmd=$1
	shift
	case $cmd in
	-h | --help | help)
		usage
		return 0
		;;
	esac
	check_requirements
	case $cmd in
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	status) cmd_status "$@" ;;
	start) cmd_start "$@" ;;
	stop) cmd_stop "$@" ;;
	kill)
		[[ $# -eq 1 ]] || usage_error "usage: kill K"
		cmd_stop "$1" KILL
		;;
	exec) cmd_exec "$@" ;;
	partition) cmd_partition "$@" ;;
	heal) cmd_heal "$@" ;;
	loss) cmd_loss "$@" ;;
	addr) cmd_addr "$@" ;;
	subnet) cmd_subnet "$@" ;;
	block-udp) cmd_block_udp block "$@" ;;
	unblock-udp) cmd_block_udp unblock "$@" ;;
	*) usage_error "unknown command '$cmd'" ;;
	esac
}

main "$@"
