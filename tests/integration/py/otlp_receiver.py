"""An OTLP/HTTP logs receiver for the tests that decodes with the official OpenTelemetry
protobuf definitions (the opentelemetry-proto package): each POST /v1/logs body is parsed with
google.protobuf.json_format.Parse into ExportLogsServiceRequest (OTLP/JSON; unknown fields are
an error), or ParseFromString for protobuf. Every decoded LogRecord is appended as one JSON line
to --out: {"resource": {...}, "scope": ..., "time", "observed", "severityNumber",
"severityText", "body", "attributes"}.

A second port (--control-port) drives faults, so they work while the data port is down:
  POST /outage?seconds=N   close the data port (connections refused) for N seconds
  POST /fail?status=S&count=N&retryAfter=R   answer the next N requests with S (Retry-After R)
  GET  /count              records received so far
Options: --cert/--key serve https; --client-ca requires a client certificate signed by it;
--header 'Name: value' requires that header (else 401)."""
import argparse
import http.server
import json
import ssl
import sys
import threading
import time
import urllib.parse

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--control-port", type=int, required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--cert")
ap.add_argument("--key")
ap.add_argument("--client-ca")
ap.add_argument("--header", action="append", default=[])
args = ap.parse_args()

lock = threading.Lock()
state = {"count": 0, "requests": 0, "fail": None, "faults": 0}
out = open(args.out, "a", buffering=1)
required = [h.split(":", 1) for h in args.header]


def anyvalue(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: anyvalue(kv.value) for kv in v.kvlist_value.values}
    if kind == "array_value":
        return [anyvalue(x) for x in v.array_value.values]
    return getattr(v, kind)


class Data(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: an outage refuses the next

    def log_message(self, *a):
        pass

    def answer(self, status, body=b"{}", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        with lock:
            state["requests"] += 1
            f = state["fail"]
            if f and f["count"] > 0:
                f["count"] -= 1
                state["faults"] += 1
                hdrs = [("Retry-After", str(f["retryAfter"]))] if f["retryAfter"] else []
                return self.answer(f["status"], b'{"message":"injected fault"}', hdrs)
        if self.path != "/v1/logs":
            return self.answer(404, b'{"message":"not /v1/logs"}')
        for name, value in required:
            if self.headers.get(name.strip()) != value.strip():
                return self.answer(401, b'{"message":"missing or wrong header"}')
        req = ExportLogsServiceRequest()
        ctype = self.headers.get("Content-Type", "")
        try:
            if ctype == "application/json":
                json_format.Parse(body, req)  # strict: an unknown field is an error
            elif ctype == "application/x-protobuf":
                req.ParseFromString(body)
            else:
                return self.answer(415, b'{"message":"unsupported content type"}')
        except Exception as e:
            print(f"receiver: cannot decode: {e!r}", file=sys.stderr, flush=True)
            return self.answer(400, json.dumps({"message": repr(e)}).encode())
        lines = []
        for rl in req.resource_logs:
            res = {kv.key: anyvalue(kv.value) for kv in rl.resource.attributes}
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    lines.append(json.dumps({
                        "resource": res,
                        "scope": [sl.scope.name, sl.scope.version],
                        "time": r.time_unix_nano,
                        "observed": r.observed_time_unix_nano,
                        "severityNumber": r.severity_number,
                        "severityText": r.severity_text,
                        "body": anyvalue(r.body),
                        "attributes": {kv.key: anyvalue(kv.value) for kv in r.attributes},
                    }))
        with lock:
            for l in lines:
                out.write(l + "\n")
            out.flush()
            state["count"] += len(lines)
        resp = json_format.MessageToJson(ExportLogsServiceResponse()).encode()
        self.answer(200, resp)


class DataServer(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True


def serve_data():
    srv = DataServer(("127.0.0.1", args.port), Data)
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    return srv


data = {"srv": serve_data()}
threading.Thread(target=data["srv"].serve_forever, daemon=True).start()


def outage(seconds):
    srv = data["srv"]
    srv.shutdown()  # stops accepting; requests being handled finish (and are counted) first
    srv.server_close()
    print(f"receiver: down for {seconds} s", file=sys.stderr, flush=True)
    time.sleep(seconds)
    data["srv"] = serve_data()
    threading.Thread(target=data["srv"].serve_forever, daemon=True).start()
    print("receiver: up again", file=sys.stderr, flush=True)


class Control(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with lock:
            self.reply(dict(state, fail=None))

    def do_POST(self):
        u = urllib.parse.urlparse(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
        if u.path == "/outage":
            threading.Thread(target=outage, args=(float(q["seconds"]),), daemon=True).start()
        elif u.path == "/fail":
            with lock:
                state["fail"] = {
                    "status": int(q["status"]),
                    "count": int(q.get("count", "1")),
                    "retryAfter": q.get("retryAfter"),
                }
        self.reply({"ok": True})


print("receiver: ready", file=sys.stderr, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", args.control_port), Control).serve_forever()
