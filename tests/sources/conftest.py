"""A local HTTP server standing in for a model mirror and for the Hugging Face Hub: it serves real files, and
the misbehaviours a download must survive (a body shorter than its Content-Length, a redirect loop)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

HF_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Mirror:
    """What the server serves and what it saw."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # path -> body
    short: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before closing, Content-Length full
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location
    delays: dict[str, float] = field(default_factory=dict)  # path -> seconds before answering
    hf_repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # ORG/NAME -> file name -> body
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # method, path, headers
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str) -> int:
        with self.lock:
            return sum(1 for method, seen, _ in self.requests if method == "GET" and seen == path)


class _Handler(BaseHTTPRequestHandler):
    mirror: Mirror

    def log_message(self, *args):  # quiet test output
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, *, head: bool) -> None:
        mirror = self.mirror
        path = self.path.partition("?")[0]
        with mirror.lock:
            mirror.requests.append((self.command, path, dict(self.headers)))
        time.sleep(mirror.delays.get(path, 0.0))
        if path in mirror.redirects:
            self._send(302, b"", {"Location": mirror.redirects[path]}, head)
        elif path in mirror.files:
            body = mirror.files[path]
            if path in mirror.short:
                self._send(200, body[: mirror.short[path]], {"Content-Length": str(len(body))}, head, close=True)
            else:
                self._send(200, body, {}, head)
        elif path.startswith("/api/models/"):
            self._hf_info(path.removeprefix("/api/models/"), head)
        elif "/resolve/" in path:
            self._hf_file(path, head)
        else:
            self._send(404, b"not found", {}, head)

    def _hf_info(self, rest: str, head: bool) -> None:
        repo_id = "/".join(rest.split("/")[:2])
        files = self.mirror.hf_repos.get(repo_id)
        if files is None:
            self._send(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)
            return
        if rest.split("/")[2:3] == ["tree"]:  # the listing snapshot_download takes its files from
            tree = [{"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest()}
                    for name, body in sorted(files.items())]
            self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
            return
        info = {"id": repo_id, "modelId": repo_id, "sha": HF_COMMIT, "private": False,
                "siblings": [{"rfilename": name} for name in sorted(files)]}
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)

    def _hf_file(self, path: str, head: bool) -> None:
        repo_part, _, rest = path.lstrip("/").partition("/resolve/")
        _revision, _, name = rest.partition("/")
        body = self.mirror.hf_repos.get(repo_part, {}).get(name)
        if body is None:
            self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            return
        headers = {"ETag": f'"{hashlib.sha256(body).hexdigest()}"', "X-Repo-Commit": HF_COMMIT}
        self._send(200, body, headers, head)

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool, close: bool = False) -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not head:
            self.wfile.write(body)
            self.wfile.flush()


@pytest.fixture
def mirror():
    state = Mirror()
    handler = type("Handler", (_Handler,), {"mirror": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def download_cache(tmp_path, monkeypatch):
    """A download cache of the test's own, so nothing another test fetched is found in it."""
    root = tmp_path / "downloads"
    monkeypatch.setenv("SLIMSERVE_DOWNLOAD_CACHE", str(root))
    return root
