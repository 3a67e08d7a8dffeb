"""Local stand-ins for Slack, PagerDuty and an SMTP server, for the live Alertmanager check.

    python sinks.py <http-port> <smtp-port> <out.jsonl>

Every HTTP POST (any path) and every e-mail received is appended to out.jsonl as one JSON
object: {"kind": "http", "path", "body"} or {"kind": "smtp", "to", "subject"}. Runs until
killed. Needs aiosmtpd (installed in the tools venv).
"""

import email
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

HTTP_PORT, SMTP_PORT, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
LOCK = threading.Lock()


def record(obj):
    with LOCK, open(OUT, "a") as f:
        f.write(json.dumps(obj) + "\n")


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
        record({"kind": "http", "path": self.path, "body": body})
        self.send_response(200 if "slack" in self.path else 202)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status":"success","message":"Event processed"}')

    def log_message(self, *args):
        pass


class Smtp:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content)
        record({"kind": "smtp", "to": envelope.rcpt_tos, "subject": msg.get("Subject", "")})
        return "250 OK"


controller = Controller(Smtp(), hostname="127.0.0.1", port=SMTP_PORT)
controller.start()
server = ThreadingHTTPServer(("127.0.0.1", HTTP_PORT), Http)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(f"sinks: http 127.0.0.1:{HTTP_PORT}, smtp 127.0.0.1:{SMTP_PORT}", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    controller.stop()
