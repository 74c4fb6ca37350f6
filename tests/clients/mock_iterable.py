#!/usr/bin/env python3
"""A mock of Iterable's REST API for tests/clients/run.sh.

Records every request (method, path, query, headers, JSON body) as one JSON line in --log and
answers 200 with a body shaped like Iterable's:

* /api/users/bulkUpdate, /api/lists/subscribe, /api/lists/unsubscribe:
  {"successCount": N, "failCount": 0, "createdFields": [], "filteredOutFields": [], "invalidEmails": [],
   "invalidUserIds": [], "failedUpdates": {...empty lists}}
* /api/events/trackBulk: the same counts plus "disallowedEventNames": []
* anything else: {"msg": "", "code": "Success", "params": null}

It binds 127.0.0.1 only. With --port 0 it picks a free port and writes it to --port-file.
Standard library only.
"""

import argparse
import gzip
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAILED_UPDATES = {
    k: []
    for k in [
        "conflictEmails",
        "conflictUserIds",
        "forgottenEmails",
        "forgottenUserIds",
        "invalidDataEmails",
        "invalidDataUserIds",
        "invalidEmails",
        "invalidUserIds",
        "notFoundEmails",
        "notFoundUserIds",
    ]
}


def answer(path, body):
    """The 200 body Iterable would send for a request to `path` with JSON `body`."""
    body = body if isinstance(body, dict) else {}
    if path in ("/api/users/bulkUpdate", "/api/lists/subscribe", "/api/lists/unsubscribe"):
        items = body.get("users") or body.get("subscribers")
    elif path == "/api/events/trackBulk":
        items = body.get("events")
    else:
        return {"msg": "", "code": "Success", "params": None}
    n = len(items) if isinstance(items, list) else 0
    out = {
        "successCount": n,
        "failCount": 0,
        "createdFields": [],
        "filteredOutFields": [],
        "invalidEmails": [],
        "invalidUserIds": [],
        "failedUpdates": FAILED_UPDATES,
    }
    if path == "/api/events/trackBulk":
        out["disallowedEventNames"] = []
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-iterable/1"

    def log_message(self, *args):  # quiet: the JSONL file is the record
        pass

    def _handle(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raw = self._read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
        if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
            raw = gzip.decompress(raw)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        url = urlsplit(self.path)
        record = {
            "ts": time.time(),
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        if body is None and raw:
            record["raw"] = raw.decode("utf-8", "replace")
        self.server.record(record)
        reply = json.dumps(answer(url.path, body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def _read_chunked(self):
        data = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    do_POST = _handle
    do_GET = _handle
    do_PUT = _handle
    do_DELETE = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, log_path):
        super().__init__(address, Handler)
        self.lock = threading.Lock()
        self.log = open(log_path, "a", encoding="utf-8")

    def record(self, record):
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.lock:
            self.log.write(line)
            self.log.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", help="write the bound port here (once listening)")
    p.add_argument("--log", required=True, help="JSON lines file of the requests received")
    a = p.parse_args()
    server = Server(("127.0.0.1", a.port), a.log)
    port = server.server_address[1]
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, a.port_file)
    print(f"mock Iterable listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
