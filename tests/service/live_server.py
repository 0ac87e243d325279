"""A real service process on localhost for the load and fault tests (and scripts/bench_service_load.py):
start it, wait until it answers, talk to it with the standard library (a new connection per request), kill it.

The server is tests/service/serve_fixture.py (the 6-product studio gallery, identity-like embedder, blob
detector, the test admin keys) run by uvicorn in its own session, one or several workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    directory: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (uvicorn's supervisor and its workers), then reap it."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def output(self) -> str:
        return self.proc.stdout.read().decode(errors="replace")[-3000:] if self.proc.stdout else ""


def start_server(directory: str | os.PathLike, *, workers: int = 1, env: dict | None = None,
                 timeout: float = 120) -> Server:
    """The fixture service over ``directory`` (created with the 6 products if missing). Returns once it answers
    /health (with ``workers`` > 1: once every worker has answered)."""
    directory = Path(directory)
    port = free_port()
    full_env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                **(env or {})}
    if workers > 1:
        from tests.service.conftest import make_service

        if not (directory / "CURRENT").is_file():
            make_service(directory)  # created once, before the workers race to open it
        full_env["SERVE_FIXTURE_DIR"] = str(directory)
        cmd = [sys.executable, "-m", "uvicorn", "tests.service.serve_fixture:app_from_env", "--factory",
               "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    else:
        cmd = [sys.executable, "-m", "tests.service.serve_fixture", "--dir", str(directory), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", directory)
    deadline = time.time() + timeout
    pids: set[int] = set()
    while len(pids) < workers:
        try:
            pids.add(get(server.url + "/health", timeout=5)[1]["worker_pid"])
            continue
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            server.kill()
            raise RuntimeError(f"the service did not start ({len(pids)} of {workers} workers answered): "
                               f"{server.output()}")
        time.sleep(0.2)
    return server


def _request(req: urllib.request.Request, timeout: float) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return err.code, json.loads(body)
        except ValueError:
            return err.code, {"detail": body.decode(errors="replace")}


def get(url: str, timeout: float = 30) -> tuple[int, dict]:
    return _request(urllib.request.Request(url), timeout)


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
             for k, v in fields.items()]
    for name, filename, data in files:
        parts.append((f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def send(method: str, url: str, *, fields: dict | None = None, files: list | None = None, key: str | None = None,
         params: dict | list | None = None, timeout: float = 60) -> tuple[int, dict]:
    """One request; ``files`` = [(field, filename, bytes)] makes it multipart, else ``fields`` are urlencoded."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None
    if files:
        data, headers["Content-Type"] = multipart(fields or {}, files)
    elif fields:
        data = urllib.parse.urlencode(fields).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    return _request(urllib.request.Request(url, data=data, method=method, headers=headers), timeout)
