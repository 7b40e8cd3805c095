"""A real `hs2 serve-rm` process on a free loopback port, for the server and client tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedRM:
    def __init__(self, proc: subprocess.Popen, url: str, key: str | None):
        self.proc, self.url, self.key = proc, url, key

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def start_server(rm_dir: str, *options: str, key: str | None = None, timeout: float = 120) -> ServedRM:
    """Start `hs2 serve-rm --model rm_dir` and wait until /health answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "HS2_RM_API_KEY"}
    if key:
        env["HS2_RM_API_KEY"] = key
    proc = subprocess.Popen([sys.executable, "-m", "hs2trl.cli", "serve-rm", "--model", rm_dir, "--port", str(port),
                             *options], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve-rm exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return ServedRM(proc, url, key)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"serve-rm did not answer /health within {timeout}s")


@contextmanager
def served(rm_dir: str, *options: str, key: str | None = None):
    server = start_server(rm_dir, *options, key=key)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
