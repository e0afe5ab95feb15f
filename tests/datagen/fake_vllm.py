"""A stand-in for ``python -m vllm.entrypoints.openai.api_server`` to test process handling cheaply.

It accepts vLLM's arguments, answers ``GET /v1/models`` like vLLM, and starts a child process (as vLLM starts
its engine core) which it terminates on SIGTERM, as vLLM does. Run as ``python fake_vllm.py -m vllm... ARGS``.
"""

import argparse
import json
import signal
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m")
    parser.add_argument("--model")
    parser.add_argument("--served-model-name")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args, _ = parser.parse_known_args()

    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    print(f"engine pid {engine.pid}", flush=True)

    def stop(*_):
        engine.terminate()
        engine.wait()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(
                {"object": "list", "data": [{"id": args.served_model_name, "max_model_len": 4096}]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    HTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":  # imported by pytest's doctest collection: do nothing then
    main()
