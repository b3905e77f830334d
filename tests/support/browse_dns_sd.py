#!/usr/bin/env python3
"""Watch one DNS-SD service type with python-zeroconf, a DNS-SD stack that is not ours.

Used by tests/lab_advertise.rs inside a lab host that runs no agent: what a phone or laptop on
the LAN sees of the services the mesh advertises. It browses --type until killed (or for
--timeout seconds) and prints one JSON object per line, flushed at once:

    {"event": "added", "name": "web._http._tcp.local.", "port": 20000,
     "server": "web-mdcrwtdqlk.local.", "addresses": ["10.77.0.1", ...],
     "properties": {"node": "h1", "mesh": "web"}, "t": 1.234}
    {"event": "updated", ...same fields...}     (TXT changed: e.g. the copy moved to another node)
    {"event": "removed", "name": "web._http._tcp.local.", "t": 5.678}
    {"event": "ready", "t": 0.01}               (first line: the browser runs)

`t` is seconds since the script started. An added or updated instance is printed once it
resolves (SRV, TXT and an address); one that does not resolve within --resolve-for seconds is
printed with "port": null. Exit code 2 if zeroconf is not installed.
"""
import argparse
import json
import queue
import sys
import time

try:
    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf
except ImportError:
    print("browse_dns_sd.py: python zeroconf is not installed (apt-get install python3-zeroconf)",
          file=sys.stderr)
    sys.exit(2)

# Per-query timeout for resolving one instance, in ms: short, because we retry.
RESOLVE_TIMEOUT_MS = 500


def decode(value):
    if value is None:
        return None
    return value.decode("utf-8", errors="replace")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", default="_http._tcp.local.", help="service type with domain")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to browse at most")
    parser.add_argument("--resolve-for", type=float, default=5.0,
                        help="seconds to keep trying to resolve an added instance")
    args = parser.parse_args()

    start = time.monotonic()

    def emit(record):
        record["t"] = round(time.monotonic() - start, 3)
        print(json.dumps(record), flush=True)

    changes = queue.Queue()

    def on_change(zeroconf, service_type, name, state_change):
        # Runs on zeroconf's thread, which must not block: resolve in the main loop.
        changes.put((state_change, name))

    zc = Zeroconf()
    browser = ServiceBrowser(zc, args.type, handlers=[on_change])
    emit({"event": "ready"})
    deadline = start + args.timeout
    try:
        while time.monotonic() < deadline:
            try:
                state_change, name = changes.get(timeout=0.1)
            except queue.Empty:
                continue
            if state_change == ServiceStateChange.Removed:
                emit({"event": "removed", "name": name})
                continue
            event = "added" if state_change == ServiceStateChange.Added else "updated"
            info = None
            give_up = time.monotonic() + args.resolve_for
            while time.monotonic() < give_up:
                # A fresh lookup every time: the records may have changed since the event.
                info = zc.get_service_info(args.type, name, timeout=RESOLVE_TIMEOUT_MS)
                if info is not None and info.port and info.parsed_addresses():
                    break
            if info is None:
                emit({"event": event, "name": name, "port": None})
                continue
            emit({
                "event": event,
                "name": name,
                "port": info.port,
                "server": info.server,
                "addresses": info.parsed_addresses(),
                "properties": {decode(k): decode(v) for k, v in info.properties.items()},
            })
    finally:
        browser.cancel()
        zc.close()


if __name__ == "__main__":
    main()
