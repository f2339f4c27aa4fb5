"""
A TCP listener on 127.0.0.1:PORT that forwards each connection to a Unix
socket: the second master of a two-master lab reaches the Kubernetes API
emulator (in the first master's namespace, on its 127.0.0.1 and on a Unix
socket in the lab directory) at the address its kubeconfig names, from its
own namespace, without any routed traffic.

    python lab/unix_forward.py --port 6443 --socket <lab dir>/kube.sock
"""

import argparse
import signal
import socket
import socketserver
import sys
import threading


def _pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Handler(socketserver.BaseRequestHandler):
    target = None

    def handle(self):
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.target)
        except OSError:
            upstream.close()
            return
        back = threading.Thread(target=_pump, args=(upstream, self.request), daemon=True)
        back.start()
        _pump(self.request, upstream)
        back.join(60)
        upstream.close()


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--socket", required=True)
    args = parser.parse_args()
    server = _Server(("127.0.0.1", args.port), type("_H", (_Handler,), {"target": args.socket}))
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    print(f"127.0.0.1:{args.port} -> {args.socket}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
