#!/usr/bin/env python3
"""Summarise cases.jsonl + oracle.jsonl (Python 3 standard library only).

Prints Markdown: cases per action, how many the oracle rejected, and every distinct
error message with its count. Used to write the statistics section of README.md.

    python3 tools/differential/stats.py [--cases PATH] [--oracle PATH]
"""

import argparse
import collections
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "data", "differential"))
SPLIT = re.compile(r"(?<=\.) (?=[A-Z])")  # AggregateAjvError joins its messages with a space


def now_case(event):
    """createdAt becomes the oracle's wall clock when the event timestamp is absent, null or ''."""
    return event.get("timestamp", None) in (None, "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=os.path.join(DATA, "cases.jsonl"))
    ap.add_argument("--oracle", default=os.path.join(DATA, "oracle.jsonl"))
    args = ap.parse_args()
    with open(args.cases, encoding="utf-8") as fh:
        cases = [json.loads(line) for line in fh]
    with open(args.oracle, encoding="utf-8") as fh:
        outs = [json.loads(line) for line in fh]
    assert len(cases) == len(outs), (len(cases), len(outs))

    lines = collections.Counter()
    rejected = collections.Counter()
    events = collections.Counter()
    ev_rejected = collections.Counter()
    full = collections.Counter()
    atomic = collections.Counter()
    kinds = collections.Counter()
    batch_full = collections.Counter()
    batch_atomic = collections.Counter()
    no_request = []
    now_single = 0
    now_batch = 0
    for c, o in zip(cases, outs):
        a = c["action"]
        if "events" in c:
            lines[(a, "batch")] += 1
            events[(a, "batch")] += len(c["events"])
            for ev, m in zip(c["events"], o.get("multistatus", [])):
                if m.get("status") != 200:
                    ev_rejected[(a, "batch")] += 1
                    msg = m.get("errormessage", "?")
                    batch_full[(a, m.get("status"), m.get("errortype"), msg)] += 1
                    for part in SPLIT.split(msg):
                        batch_atomic[part] += 1
                elif a == "trackEvent" and now_case(ev):
                    now_batch += 1
            if "request" not in o:
                no_request.append(c["name"])
            if "error" in o:
                rejected[(a, "batch")] += 1
                full[(a, o["error"])] += 1
            continue
        lines[(a, "single")] += 1
        events[(a, "single")] += 1
        if "error" in o:
            rejected[(a, "single")] += 1
            ev_rejected[(a, "single")] += 1
            full[(a, o["error"])] += 1
            kinds[(o.get("errorType"), o.get("status"), o.get("code"))] += 1
            for part in SPLIT.split(o["error"]):
                atomic[part] += 1
        elif a in ("trackEvent", "trackPurchase") and now_case(c["event"]):
            now_single += 1

    order = ["updateUser", "trackEvent", "updateCart", "trackPurchase"]
    print("| action | single lines | rejected | batch lines | events in batches | batch events rejected (multistatus 400) |")
    print("|---|---|---|---|---|---|")
    for a in order:
        print(f"| {a} | {lines[(a, 'single')]} | {rejected[(a, 'single')]} | {lines[(a, 'batch')]} | "
              f"{events[(a, 'batch')]} | {ev_rejected[(a, 'batch')]} |")
    ts, tr = sum(lines[(a, 'single')] for a in order), sum(rejected[(a, 'single')] for a in order)
    tb, te, tbr = (sum(lines[(a, 'batch')] for a in order), sum(events[(a, 'batch')] for a in order),
                   sum(ev_rejected[(a, 'batch')] for a in order))
    print(f"| **total** | {ts} | {tr} | {tb} | {te} | {tbr} |")
    print()
    print(f"Lines: {len(cases)}. Batch lines with an `error` key: {sum(rejected[(a, 'batch')] for a in order)}. "
          f"Batch lines where every event failed (no request, only `multistatus`): {len(no_request)} "
          f"({', '.join(no_request) or '-'}).")
    print(f"Successful cases whose `createdAt` is the oracle's clock (event timestamp absent/null/\"\"): "
          f"{now_single} single, {now_batch} batch events.")
    print()
    print("Single-event error classes (errorType, status, code):")
    print()
    for (t, s, cd), n in kinds.most_common():
        print(f"* `{t}` status={s} code={cd}: {n}")
    print()
    print("### Single-event errors split into their individual messages")
    print()
    print("| count | message |")
    print("|---|---|")
    for m, n in sorted(atomic.items(), key=lambda x: (-x[1], x[0])):
        print(f"| {n} | {m} |")
    print()
    print("### Batch per-event errors (multistatus status 400), split")
    print()
    print("| count | message |")
    print("|---|---|")
    for m, n in sorted(batch_atomic.items(), key=lambda x: (-x[1], x[0])):
        print(f"| {n} | {m} |")
    print()
    print("### Every distinct full error string (single events), by action")
    print()
    print("| count | action | error |")
    print("|---|---|---|")
    for (a, m), n in sorted(full.items(), key=lambda x: (order.index(x[0][0]), -x[1], x[0][1])):
        print(f"| {n} | {a} | {m} |")
    print()
    print("### Every distinct batch per-event error", "(status, errortype, message)")
    print()
    print("| count | action | status | errortype | errormessage |")
    print("|---|---|---|---|---|")
    for (a, s, t, m), n in sorted(batch_full.items(), key=lambda x: (order.index(x[0][0]), -x[1], x[0][3])):
        print(f"| {n} | {a} | {s} | {t} | {m} |")


if __name__ == "__main__":
    main()
