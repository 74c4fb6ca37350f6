#!/usr/bin/env python3
"""Sends an identify, a track and an Order Completed to the gateway with Segment's official Python
library (segment-analytics-python), pointed at the gateway with its `host` option and gzip on,
then flushes and shuts the client down. Writes what it sent (with the library's own messageIds)
as JSON to --out, for tests/clients/check.py. Exits 1 if the library reports any error.

    python send.py --host http://127.0.0.1:PORT --write-key KEY --run RUN_ID --out FILE
"""

import argparse
import json
import sys
from importlib.metadata import version

from segment.analytics.client import Client


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--write-key", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    errors = []

    def on_error(error, batch):
        errors.append(f"{error} ({len(batch)} events)")

    client = Client(
        write_key=a.write_key,
        host=a.host,
        gzip=True,
        max_retries=3,
        timeout=10,
        upload_interval=0.2,
        on_error=on_error,
    )
    users = {k: f"{a.run}-python-{k}" for k in ("identify", "track", "order")}
    traits = {"email": f"{users['identify']}@example.com", "firstName": "Bob", "plan": "basic"}
    track_props = {"title": "Outro", "position": 7}
    products = [
        {"product_id": "p-3", "sku": "SKU-3", "name": "Pot", "price": 30.25, "quantity": 1, "category": "Kitchen"},
        {"product_id": "p-4", "sku": "SKU-4", "name": "Cup", "price": 4.5, "quantity": 3, "category": "Kitchen"},
    ]
    order = {"order_id": f"{a.run}-python-o1", "total": 43.75, "currency": "USD", "products": products}

    sent = []

    def record(kind, result, **expect):
        ok, msg = result
        if not ok:
            errors.append(f"{kind}: not queued")
        sent.append({"kind": kind, "messageId": msg.get("messageId"), **expect})

    record(
        "identify",
        client.identify(users["identify"], traits),
        userId=users["identify"],
        traits=traits,
    )
    record(
        "track",
        client.track(users["track"], "Video Played", track_props),
        userId=users["track"],
        event="Video Played",
        properties=track_props,
    )
    record(
        "order",
        client.track(
            users["order"],
            "Order Completed",
            order,
            context={"traits": {"email": f"{users['order']}@example.com"}},
        ),
        userId=users["order"],
        event="Order Completed",
        order_id=order["order_id"],
        total=order["total"],
        products=products,
    )
    client.flush()
    client.shutdown()

    lib = f"segment-analytics-python {version('segment-analytics-python')}"
    with open(a.out, "w") as f:
        json.dump({"client": "python", "library": lib, "events": sent, "errors": errors}, f, indent=2)
    for e in errors:
        print(f"python client error: {e}", file=sys.stderr)
    print(f"python ({lib}): sent {len(sent)} events, {len(errors)} errors")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
