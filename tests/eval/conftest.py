"""Models under test for the judge and review tests: a stdlib OpenAI-compatible endpoint serving two scripted models,
`right` (answers "code for X" with the reference "CODE X OK") and `wrong` (answers "no")."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@pytest.fixture(scope="session")
def answering():
    """The models under test: `right` answers with the reference, `wrong` with "no"."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.reply({"object": "list", "data": [{"id": "right"}, {"id": "wrong"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            word = body["messages"][-1]["content"].split()[-1]
            text = f"CODE {word} OK" if body["model"] == "right" else "no"
            self.reply({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}], "usage": {"completion_tokens": 3}})

        def reply(self, data):
            raw = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 64  # eval sends up to --batch-size (32) requests at once; the default backlog is 5

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
