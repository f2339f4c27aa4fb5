"""
Ingress controller stand-in for one lab node: HTTP on ports 80 and 443 that
answers with the node's name, and a health endpoint on 10254 (/healthz, like
ingress-nginx) that answers 200, or 500 while the file FLAG exists.

    python lab/ingress_standin.py NODE_NAME FLAG_FILE
"""

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(name, flag, health):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if health:
                code, body = (500, b"unhealthy\n") if os.path.exists(flag) else (200, b"ok\n")
            else:
                code, body = 200, (name + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def main(name, flag):
    servers = [
        ThreadingHTTPServer(("0.0.0.0", port), make_handler(name, flag, port == 10254))
        for port in (80, 443, 10254)
    ]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
