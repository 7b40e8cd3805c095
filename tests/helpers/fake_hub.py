"""A local stand-in for the Hugging Face Hub HTTP API: just what `HfApi.create_repo`, `create_branch` and
`upload_folder` call (huggingface_hub 2.x), recording every uploaded file. Point a process at it with
`HF_ENDPOINT=<server.url>`; every file is answered as a "regular" (inline, base64) upload, so no LFS/Xet storage is
involved and the commit payload carries the file contents.

Modes: "ok" (accepts uploads made with `token`), "401" (rejects every request as unauthenticated), "500" (server
error on every request).
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT_OID = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, mode: str = "ok", token: str = "hf_dummy_token"):
        self.mode, self.token = mode, token
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.repos: set[str] = set()
        self.branches: dict[str, set[str]] = {}  # repo -> branch names
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}  # (repo, revision) -> {path: content}
        self.commit_messages: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def uploaded(self, repo: str, revision: str = "main") -> dict[str, bytes]:
        return self.files.get((repo, revision), {})

    # ------------------------------------------------------------------------------------------------- the API
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: dict | None = None) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _refuse(self) -> bool:
                if hub.mode == "500":
                    self._reply(500, {"error": "Internal Server Error"})
                    return True
                if hub.mode == "401" or self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._reply(401, {"error": "Invalid username or password."})
                    return True
                return False

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                if self._refuse():
                    return
                m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/?]+))?", self.path)
                if m and m.group(1) in hub.repos:
                    files = hub.uploaded(m.group(1), m.group(2) or "main")
                    return self._reply(200, {"id": m.group(1), "sha": COMMIT_OID,
                                             "siblings": [{"rfilename": p} for p in files]})
                self._reply(404, {"error": "Repository not found"})

            def do_POST(self):
                body = self._body()
                hub.requests.append(("POST", self.path))
                if self._refuse():
                    return
                path = self.path.split("?", 1)[0]
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    repo = f"{payload.get('organization') or 'user'}/{payload['name']}"
                    hub.repos.add(repo)
                    hub.branches.setdefault(repo, {"main"})
                    return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo, "id": repo})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                m = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)$", path)
                if not m:
                    return self._reply(404, {"error": f"unknown endpoint {path}"})
                repo, action, revision = m.group(1), m.group(2), m.group(3).replace("%2F", "/")
                if repo not in hub.repos:
                    return self._reply(404, {"error": "Repository not found"})
                if action == "branch":
                    if revision in hub.branches[repo]:
                        return self._reply(409, {"error": "Branch already exists"})
                    hub.branches[repo].add(revision)
                    hub.files[(repo, revision)] = dict(hub.uploaded(repo, "main"))
                    return self._reply(200, {})
                if revision not in hub.branches[repo]:
                    return self._reply(404, {"error": f"Invalid rev id: {revision}"})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                    ]})
                files = hub.files.setdefault((repo, revision), {})
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "header":
                        hub.commit_messages.append(item["value"].get("summary", ""))
                    elif item["key"] == "file":
                        value = item["value"]
                        content = value["content"]
                        files[value["path"]] = (
                            base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                        )
                    elif item["key"] == "deletedFile":
                        files.pop(item["value"]["path"], None)
                    else:  # lfsFile and friends: never asked for (every upload mode is "regular")
                        return self._reply(400, {"error": f"unsupported commit item {item['key']}"})
                self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{COMMIT_OID}", "commitOid": COMMIT_OID})

        return Handler
