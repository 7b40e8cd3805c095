"""A local stand-in for an OpenAI-compatible judge (`GET /v1/models`, `POST /v1/chat/completions`), like the fake Hub
of the Hub tests: it records every request (messages, model, headers) and answers what the test's `reply` function
returns for it: a text, `(status, text)` for an HTTP error, or a dict with `text` and `logprobs` (alpaca_eval's
annotator reads the top log-probabilities of the first token).

    with FakeJudge(reply=lambda req: "Rating: [[7]]") as judge:   # judge.url -> http://127.0.0.1:PORT/v1
        ...
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "sk-test-judge-key-0123456789"


class FakeJudge:
    def __init__(self, reply: Callable[[dict], object], key: str = KEY):
        self.reply, self.key = reply, key
        self.requests: list[dict] = []  # chat requests: the JSON body, plus "authorization"
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeJudge:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def user_prompts(self) -> list[str]:
        return [m["content"] for r in self.requests for m in r["messages"] if m["role"] == "user"]

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {judge.key}":
                    self._send(401, {"error": {"message": "Incorrect API key provided",
                                               "type": "invalid_request_error"}})
                    return False
                return True

            def do_GET(self):
                if self._authorised():
                    self._send(200, {"object": "list",
                                     "data": [{"id": "judge", "object": "model", "owned_by": "test"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self._authorised():
                    return
                with judge._lock:
                    judge.requests.append(body)
                answer = judge.reply(body)
                status, text, logprobs = 200, answer, None
                if isinstance(answer, tuple):
                    status, text = answer
                elif isinstance(answer, dict):
                    text, logprobs = answer["text"], answer.get("logprobs")
                if status != 200:
                    self._send(status, {"error": {"message": text, "type": "server_error"}})
                    return
                choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text},
                          "logprobs": None}
                if logprobs is not None:
                    choice["logprobs"] = {"content": [{"token": text, "logprob": logprobs.get(text, -0.1),
                                                       "bytes": None,
                                                       "top_logprobs": [{"token": t, "logprob": lp, "bytes": None}
                                                                        for t, lp in logprobs.items()]}]}
                self._send(200, {"id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                                 "model": body.get("model"), "choices": [choice],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        return Handler
