"""`uvicorn --workers 2` on localhost over one gallery folder: a change made through whichever worker
answers is served by every worker from its next request, and concurrent adds landing on both workers all
survive (the directory's file lock around each read-modify-write)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.recognition.helpers import CATALOGUE, studio_shot
from tests.service.conftest import ADMIN_KEY, FAMILY_HEADS, make_service, png

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:  # a new connection each time: either worker may answer
        return json.loads(r.read())


def _post(url: str, fields: dict, image: bytes, key: str = ADMIN_KEY) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
                    for k, v in fields.items())
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.png\"\r\n"
             "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _healths(url: str, n: int, threads: int = 4) -> list[dict]:
    """n /health answers fetched by a few threads at once (a busy worker leaves the next connection to the other)."""
    out, lock = [], threading.Lock()

    def run(k):
        for _ in range(k):
            try:
                h = _get(url + "/health")
            except OSError as err:
                h = {"error": repr(err)}
            with lock:
                out.append(h)

    ts = [threading.Thread(target=run, args=(n // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    errors = [h for h in out if "error" in h]
    if errors or len(out) != n // threads * threads:
        raise OSError(f"{len(errors)} failed /health requests of {n}: {errors[:3]}")
    return out


@pytest.fixture
def two_workers(tmp_path):
    directory = tmp_path / "gallery"
    make_service(directory)  # the 6-product gallery on disk; each worker opens it
    port = _free_port()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT), "SERVE_FIXTURE_DIR": str(directory),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.service.serve_fixture:app_from_env", "--factory",
                             "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:  # up when both workers have answered
            try:
                _get(url + "/health")
                if len({h["worker_pid"] for h in _healths(url, 8)}) == 2:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"2 workers did not start: {proc.stdout.read().decode(errors='replace')[-3000:]}"
                            if proc.poll() is not None else "2 workers did not both answer within 120 s")
            time.sleep(0.5)
        yield url, directory
    finally:
        os.killpg(proc.pid, 15)  # uvicorn's supervisor and its two workers (own session, started here)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def test_a_change_through_one_worker_is_served_by_both(two_workers):
    url, directory = two_workers
    before = _healths(url, 8)
    assert {h["gallery_images"] for h in before} == {6} and len({h["gallery_version"] for h in before}) == 1

    status, r = _post(url + "/gallery", {"sku": "new-7", "price": "3.25"}, png(studio_shot(FAMILY_HEADS[7])))
    assert status == 200 and r["added"] == 1
    after = _healths(url, 40)
    pids = {h["worker_pid"] for h in after}
    assert len(pids) == 2, "only one worker answered 40 requests"
    assert {h["gallery_images"] for h in after} == {7}  # every answer, from either worker, has the new product
    versions = {h["gallery_version"] for h in after}
    assert len(versions) == 1 and versions != {before[0]["gallery_version"]}
    for _ in range(10):  # and it is priced, not just counted
        items = {p["sku"]: p["price"] for p in _get(url + "/gallery")["items"]}
        assert items["new-7"] == 3.25

    # Concurrent adds spread over both workers: none lost (each worker reloads under the lock before writing).
    variants = [s for s in CATALOGUE if s.variant == 1]
    results, lock = [], threading.Lock()

    def adder(k):
        for j in range(3):
            photo = png(studio_shot(variants[(3 * k + j) % 8]))
            res = _post(url + "/gallery", {"sku": f"c-{k}-{j}", "price": "1"}, photo)
            with lock:
                results.append(res)

    ts = [threading.Thread(target=adder, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=180)
    assert [s for s, _ in results] == [200] * 12, results
    final = _healths(url, 20)
    assert {h["gallery_images"] for h in final} == {7 + 12} and len({h["worker_pid"] for h in final}) == 2
    history = _get(url + "/gallery/history?limit=13")
    assert history["total"] == 6 + 1 + 12
    assert sorted(r["sku"] for r in history["items"][:12]) == sorted(f"c-{k}-{j}" for k in range(4) for j in range(3))
