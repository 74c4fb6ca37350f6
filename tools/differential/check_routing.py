#!/usr/bin/env python3
"""Check that every event in cases.jsonl is routed by Segment's automatic presets to the action
its line names (Python 3 standard library only; needs node and the actions-oracle).

Runs the oracle in `matchSubscriptions` mode on every event (batch events included) and
compares the matching presets' actions with the line's `action`.

    python3 tools/differential/check_routing.py [--cases PATH] [--oracle-dir DIR]
"""

import argparse
import collections
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "data", "differential"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=os.path.join(DATA, "cases.jsonl"))
    ap.add_argument("--oracle-dir", default="/work/shared/tools/actions-oracle")
    args = ap.parse_args()
    wanted, lines = [], []
    with open(args.cases, encoding="utf-8") as fh:
        for raw in fh:
            case = json.loads(raw)
            for ev in case.get("events") or [case["event"]]:
                wanted.append((case["name"], case["action"], ev.get("event")))
                lines.append(json.dumps({"action": "matchSubscriptions", "event": ev}, ensure_ascii=False))
    proc = subprocess.run(["node", os.path.join(args.oracle_dir, "oracle.mjs")], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, encoding="utf-8", check=True)
    results = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(results) == len(wanted), (len(results), len(wanted))
    bad = collections.Counter()
    for (name, action, event_name), res in zip(wanted, results):
        got = [p["action"] for p in res.get("result", {}).get("presets", [])]
        if got != [action]:
            bad[(action, tuple(got), json.dumps(event_name, ensure_ascii=False))] += 1
    print(f"{len(wanted)} events checked, {sum(bad.values())} routed differently")
    for key, n in bad.most_common():
        print(n, key)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
