"""Answers kube-state-metrics' endpoints with empty bodies, on the ports its flags name: /livez and /metrics on
--port, /readyz on --telemetry-port. Every other flag (--namespaces, --resources) is accepted and ignored."""

import argparse
import http.server
import threading


class Empty(http.server.BaseHTTPRequestHandler):
    paths: frozenset[str] = frozenset()

    def do_GET(self) -> None:
        self.send_response(200 if self.path in self.paths else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", "0")
        self.end_headers()


def serve(port: int, paths: set[str]) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (Empty,), {"paths": frozenset(paths)})
    return http.server.ThreadingHTTPServer(("", port), handler)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--telemetry-port", type=int, default=8081)
    flags, _ = parser.parse_known_args()
    telemetry = serve(flags.telemetry_port, {"/readyz", "/metrics"})
    threading.Thread(target=telemetry.serve_forever, daemon=True).start()
    serve(flags.port, {"/livez", "/metrics"}).serve_forever()
