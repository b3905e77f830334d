#!/usr/bin/env python3
"""Browse `_mesh._udp.local.` with python-zeroconf, a DNS-SD stack that is not ours.

Used by tests/lab.rs (`third_party_dns_sd_browser_sees_agents`) inside a lab host's network
namespace. It browses until it has resolved --expect services or --timeout seconds have passed,
then prints one JSON array on stdout:

    [{"name": "h1 (Kv8j3Rt1Qx)._mesh._udp.local.", "port": 7400, "addresses": ["10.77.0.1", ...],
      "properties": {"id": "12D3...", "mesh": "...", "pv": "1", "v": "0.1.0", "name": "h1"}}, ...]

TXT values are decoded as UTF-8 (a key without a value maps to null). Exit code 0 even if fewer
services than expected were seen: the caller asserts on the output. Exit code 2 if zeroconf is
not installed.
"""
import argparse
import json
import sys
import threading
import time

try:
    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf
except ImportError:
    print("browse_mesh.py: python zeroconf is not installed (pip install zeroconf)", file=sys.stderr)
    sys.exit(2)

SERVICE_TYPE = "_mesh._udp.local."
# Per-query timeout for resolving one instance, in ms: short, because we retry until --timeout.
RESOLVE_TIMEOUT_MS = 1000


def decode(value):
    if value is None:
        return None
    return value.decode("utf-8", errors="replace")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to browse at most")
    parser.add_argument("--expect", type=int, default=0,
                        help="stop as soon as this many services are resolved (0: browse until timeout)")
    args = parser.parse_args()

    zc = Zeroconf()
    seen_names = set()
    lock = threading.Lock()
    changed = threading.Event()

    def on_change(zeroconf, service_type, name, state_change):
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            with lock:
                seen_names.add(name)
            changed.set()

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    resolved = {}
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            with lock:
                pending = sorted(seen_names - resolved.keys())
            for name in pending:
                info = zc.get_service_info(SERVICE_TYPE, name, timeout=RESOLVE_TIMEOUT_MS)
                if info is None or not info.properties:
                    continue
                resolved[name] = {
                    "name": name,
                    "port": info.port,
                    "addresses": info.parsed_addresses(),
                    "properties": {decode(k): decode(v) for k, v in info.properties.items()},
                }
            if args.expect and len(resolved) >= args.expect:
                break
            changed.wait(timeout=0.05)
            changed.clear()
    finally:
        browser.cancel()
        zc.close()
    json.dump(sorted(resolved.values(), key=lambda s: s["name"]), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
