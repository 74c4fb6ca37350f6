#!/usr/bin/env python3
"""Checks for tests/clients/run.sh. Standard library only.

  check.py ingest   --sent A.json [B.json ...] --pg-port PORT --results FILE
      the clients reported no error, and every event they sent is in the gateway's audit log
      (table `event`, one row per messageId, the right call type), and every inbound request
      was answered 200.
  check.py delivery --sent A.json [B.json ...] --log MOCK.jsonl --api-key KEY --timeout SECS --results FILE
      the mock Iterable received, with the connection's Api-Key: a /api/users/bulkUpdate holding
      each identify's user, a /api/events/trackBulk holding each track (eventName, id = messageId),
      and a /api/commerce/trackPurchase per Order Completed with its id, total and items.

Each check prints one PASS or FAIL line and appends "PASS|FAIL name" to --results.
Exit status: 0 when every check passed, 1 otherwise.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time


class Results:
    def __init__(self, path):
        self.path = path
        self.failed = 0

    def add(self, ok, name, detail=""):
        word = "PASS" if ok else "FAIL"
        self.failed += 0 if ok else 1
        print(f"  {word}  {name}" + (f": {detail}" if detail else ""), flush=True)
        with open(self.path, "a") as f:
            f.write(f"{word} {name}\n")


def load_sent(paths):
    out = []
    for p in paths:
        if not os.path.exists(p):
            out.append({"client": os.path.basename(p).split(".")[0], "events": [], "errors": [f"{p} was not written"]})
            continue
        with open(p) as f:
            out.append(json.load(f))
    return out


# ---------------------------------------------------------------------------------------------
# ingest


def psql(port, sql):
    cmd = ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "gateway", "-c", sql]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}")
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def quote(s):
    return "'" + str(s).replace("'", "''") + "'"


def check_ingest(a):
    r = Results(a.results)
    sent = load_sent(a.sent)
    ids = [e["messageId"] for s in sent for e in s["events"] if e.get("messageId")]
    rows = psql(a.pg_port, "SELECT message_id, call_type, connection, state FROM event WHERE message_id IN (%s)" % ", ".join(map(quote, ids or ["-"])))
    by_id = {}
    for mid, call_type, conn, state in rows:
        by_id.setdefault(mid, []).append((call_type, conn, state))
    for s in sent:
        c = s["client"]
        r.add(not s["errors"] and len(s["events"]) == 3, f"{c}: the client sent 3 events and got no error",
              "; ".join(s["errors"]) or f"{len(s['events'])} events")
        for e in s["events"]:
            want = "identify" if e["kind"] == "identify" else "track"
            got = by_id.get(e.get("messageId"), [])
            ok = len(got) == 1 and got[0][0] == want and got[0][1] == a.connection
            r.add(ok, f"{c}: {e['kind']} is in the audit log", f"messageId {e.get('messageId')}, rows {got}")
    total = psql(a.pg_port, "SELECT count(*) FROM event")[0][0]
    statuses = psql(a.pg_port, "SELECT route, status, count(*) FROM inbound_request GROUP BY 1, 2 ORDER BY 1, 2")
    states = psql(a.pg_port, "SELECT state, count(*) FROM event GROUP BY 1 ORDER BY 1")
    print(f"  audit log: select count(*) from event = {total}; requests (route, status, n) = {statuses}; states = {states}")
    bad = [row for row in statuses if row[1] != "200"]
    r.add(statuses and not bad, "every inbound request was answered 200", f"{statuses}")
    return r.failed


# ---------------------------------------------------------------------------------------------
# delivery


def read_log(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass  # a line being written
    return out


def num_eq(x, y):
    try:
        return math.isclose(float(x), float(y), rel_tol=0, abs_tol=1e-9)
    except (TypeError, ValueError):
        return False


def find_identify(reqs, e, key):
    """(ok, detail) for an identify: its user in a bulkUpdate."""
    for q in reqs:
        if q["path"] != "/api/users/bulkUpdate" or not isinstance(q.get("body"), dict):
            continue
        for u in q["body"].get("users") or []:
            if isinstance(u, dict) and u.get("userId") == e["userId"]:
                data = u.get("dataFields") or {}
                missing = {k: v for k, v in e["traits"].items() if data.get(k) != v}
                if missing:
                    return False, f"bulkUpdate user {e['userId']} lacks dataFields {missing}: {u}"
                if q["headers"].get("api-key") != key:
                    return False, "bulkUpdate without the connection's Api-Key"
                return True, f"bulkUpdate user {e['userId']}"
    return False, f"no /api/users/bulkUpdate holds userId {e['userId']}"


def find_track(reqs, e, key):
    for q in reqs:
        if q["path"] != "/api/events/trackBulk" or not isinstance(q.get("body"), dict):
            continue
        for ev in q["body"].get("events") or []:
            if isinstance(ev, dict) and ev.get("userId") == e["userId"]:
                if ev.get("eventName") != e["event"] or ev.get("id") != e["messageId"]:
                    return False, f"trackBulk event for {e['userId']} is {ev} (want eventName {e['event']!r}, id {e['messageId']!r})"
                data = ev.get("dataFields") or {}
                missing = {k: v for k, v in e["properties"].items() if data.get(k) != v}
                if missing:
                    return False, f"trackBulk event lacks dataFields {missing}: {ev}"
                if q["headers"].get("api-key") != key:
                    return False, "trackBulk without the connection's Api-Key"
                return True, f"trackBulk eventName {ev['eventName']!r} id {ev['id']}"
    return False, f"no /api/events/trackBulk holds an event of userId {e['userId']}"


def find_order(reqs, e, key):
    found = []
    for q in reqs:
        b = q.get("body")
        if q["path"] != "/api/commerce/trackPurchase" or not isinstance(b, dict):
            continue
        if (b.get("user") or {}).get("userId") != e["userId"]:
            continue
        found.append(b)
        problems = []
        if b.get("id") != e["order_id"]:
            problems.append(f"id {b.get('id')!r} != {e['order_id']!r}")
        if not num_eq(b.get("total"), e["total"]):
            problems.append(f"total {b.get('total')!r} != {e['total']}")
        items = b.get("items") or []
        if len(items) != len(e["products"]):
            problems.append(f"{len(items)} items for {len(e['products'])} products")
        for p in e["products"]:
            it = next((i for i in items if isinstance(i, dict) and i.get("id") == p["product_id"]), None)
            if it is None:
                problems.append(f"no item {p['product_id']}")
            elif not (it.get("name") == p["name"] and num_eq(it.get("price"), p["price"]) and num_eq(it.get("quantity"), p["quantity"])):
                problems.append(f"item {it} != product {p}")
        if q["headers"].get("api-key") != key:
            problems.append("no Api-Key")
        if not problems:
            return True, f"trackPurchase id {b['id']} total {b['total']} with {len(items)} items"
        return False, "; ".join(problems)
    return False, f"no /api/commerce/trackPurchase for userId {e['userId']}" + (f" (saw {found})" if found else "")


FINDERS = {"identify": find_identify, "track": find_track, "order": find_order}
WHAT = {
    "identify": "identify reached Iterable in a bulkUpdate",
    "track": "track reached Iterable in a trackBulk",
    "order": "Order Completed reached Iterable as a trackPurchase",
}


def check_delivery(a):
    r = Results(a.results)
    sent = load_sent(a.sent)
    expected = [(s["client"], e) for s in sent for e in s["events"]]
    deadline = time.monotonic() + a.timeout
    while True:
        reqs = read_log(a.log)
        outcome = [(c, e, FINDERS[e["kind"]](reqs, e, a.api_key)) for c, e in expected]
        if all(ok for _, _, (ok, _) in outcome) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    counts = {}
    for q in reqs:
        counts[q["path"]] = counts.get(q["path"], 0) + 1
    print(f"  mock Iterable received {len(reqs)} requests: {counts or 'none'}")
    if not expected:
        r.add(False, "events to look for", "the clients wrote no events")
    for c, e, (ok, detail) in outcome:
        r.add(ok, f"{c}: {WHAT[e['kind']]}", detail)
    return r.failed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("ingest")
    i.add_argument("--sent", nargs="+", required=True)
    i.add_argument("--pg-port", required=True)
    i.add_argument("--connection", default="clients")
    i.add_argument("--results", required=True)
    d = sub.add_parser("delivery")
    d.add_argument("--sent", nargs="+", required=True)
    d.add_argument("--log", required=True)
    d.add_argument("--api-key", required=True)
    d.add_argument("--timeout", type=float, default=30)
    d.add_argument("--results", required=True)
    a = p.parse_args()
    failed = check_ingest(a) if a.cmd == "ingest" else check_delivery(a)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
