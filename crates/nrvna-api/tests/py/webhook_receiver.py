"""A webhook receiver for crates/nrvna-api/tests/webhooks.rs.

Verifies every delivery with BOTH the official `openai` client
(`client.webhooks.unwrap(body, headers, secret=...)`) and PyPI's
`standardwebhooks` (`Webhook(secret).verify(body, headers)`); answers 200
when both accept it, 400 otherwise. Appends one JSON line per request to
--log: webhook-id, type, data.id, receipt time (unix seconds), and what
each verifier said. Prints its port on stdout once listening; stops on
SIGTERM/SIGKILL (the test restarts it on the same --port).

    python webhook_receiver.py --secret whsec_... --log FILE [--port N] [--delay S]
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
from standardwebhooks import Webhook


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secret", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    a = ap.parse_args()

    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    std = Webhook(a.secret)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received = time.time()
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n)
            headers = {k.lower(): v for k, v in self.headers.items()}
            rec = {
                "webhook_id": headers.get("webhook-id"),
                "received_at": received,
            }
            try:
                ev = client.webhooks.unwrap(body, headers, secret=a.secret)
                rec["openai"] = "ok"
                rec["openai_type"] = getattr(ev, "type", None)
            except Exception as e:  # noqa: BLE001 - any refusal is logged
                rec["openai"] = f"{type(e).__name__}: {e}"
            try:
                payload = std.verify(body, headers)
                rec["standardwebhooks"] = "ok"
                rec["type"] = payload.get("type")
                rec["data_id"] = (payload.get("data") or {}).get("id")
                rec["event_id"] = payload.get("id")
            except Exception as e:  # noqa: BLE001
                rec["standardwebhooks"] = f"{type(e).__name__}: {e}"
            ok = rec["openai"] == "ok" and rec["standardwebhooks"] == "ok"
            rec["ok"] = ok
            if a.delay:
                time.sleep(a.delay)
            with lock, open(a.log, "a") as f:
                f.write(json.dumps(rec) + "\n")
            code = 200 if ok else 400
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
