#!/usr/bin/env python3
"""Watch one agent's replicated document through its local API, from inside its lab host.

Used by tests/lab_state.rs (`partition_heals_and_converges`) and simulations/lab/measure_state.sh
inside a lab host's network namespace, where the agent's API is http://127.0.0.1:7401.

Every --poll-ms it reads GET /v1/state (the document's heads) and GET /v1/peers (every listed
node's tags) and, each time the pair (heads, tags) differs from the last one written, appends
one JSON line to --out and flushes it:

    {"t": <time.time()>, "mono": <CLOCK_MONOTONIC s>, "heads": [...],
     "tags": {"<node id>": {"key": "value", ...}, ...}}

`t`/`mono` are taken when the second answer arrived, so a line is never early. Every lab
namespace shares the machine's clocks, so times from several hosts compare directly. While the
API does not answer it writes {"t": ..., "mono": ..., "error": "..."} once per distinct error.
It stops when --stop-file exists or after --duration seconds; exit code 0 either way.
"""
import argparse
import json
import os
import sys
import time
import urllib.request

API = "http://127.0.0.1:7401"


def get(path):
    with urllib.request.urlopen(API + path, timeout=5) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--poll-ms", type=float, default=10)
    ap.add_argument("--duration", type=float, default=120)
    ap.add_argument("--stop-file")
    args = ap.parse_args()

    deadline = time.monotonic() + args.duration
    last = None
    with open(args.out, "a") as out:
        while time.monotonic() < deadline:
            if args.stop_file and os.path.exists(args.stop_file):
                break
            try:
                state = get("/v1/state")
                rows = get("/v1/peers")
                now, mono = time.time(), time.clock_gettime(time.CLOCK_MONOTONIC)
                seen = {
                    "heads": sorted(state["heads"]),
                    "tags": {r["id"]: r.get("tags", {}) for r in rows},
                }
            except (OSError, ValueError, KeyError) as e:
                now, mono = time.time(), time.clock_gettime(time.CLOCK_MONOTONIC)
                seen = {"error": "%s: %s" % (type(e).__name__, e)}
            if seen != last:
                out.write(json.dumps(dict(seen, t=now, mono=mono)) + "\n")
                out.flush()
                last = seen
            time.sleep(args.poll_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
