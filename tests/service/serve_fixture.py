"""`python -m tests.service.serve_fixture --dir D --port P`: the real app (uvicorn) over the test gallery
(identity-like embedder, blob detector, the test admin keys), for the browser test; a subprocess like production.

Several workers: `SERVE_FIXTURE_DIR=D python -m uvicorn tests.service.serve_fixture:app_from_env --factory
--workers 2` (each worker opens the gallery in D).

Fault injection (tests/service/test_faults.py): ``SERVE_FIXTURE_PAUSE_AT=<stage>`` makes the first gallery save
of this process stop at one stage of GalleryIndex.save, touch ``SERVE_FIXTURE_MARKER`` and sleep there, so a
test can ``kill -9`` the process exactly there. Stages (the os calls of an atomic save, in order):
``write`` (first fsync of the new version's files in its temp directory: written, the manifest not yet;
Linux), ``rename`` (before the complete temp directory is renamed to v-...), ``pointer`` (before CURRENT is
replaced), ``after-pointer`` (just after: the commit point passed, old versions not cleaned yet). Test code only: it patches os functions
in this process."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


PAUSE_STAGES = ("write", "rename", "pointer", "after-pointer")


def install_pause_hook(stage: str, marker: str) -> None:
    """Stop the first save at ``stage`` (see the module docstring): touch ``marker``, then sleep until killed."""
    if stage not in PAUSE_STAGES:
        raise SystemExit(f"SERVE_FIXTURE_PAUSE_AT must be one of {PAUSE_STAGES}, got {stage!r}")
    import time
    from pathlib import Path

    done = []

    def pause() -> None:
        if not done:
            done.append(True)
            Path(marker).write_text(f"{os.getpid()} {stage}\n")
            time.sleep(120)

    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        if stage == "write" and "/.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):  # a version file, not an upload
            pause()
        return real_fsync(fd)

    def rename(src, dst, *a, **k):
        if stage == "rename" and Path(src).name.startswith(".tmp-"):
            pause()
        return real_rename(src, dst, *a, **k)

    def replace(src, dst, *a, **k):
        is_pointer = Path(dst).name == "CURRENT"
        if stage == "pointer" and is_pointer:
            pause()
        out = real_replace(src, dst, *a, **k)
        if stage == "after-pointer" and is_pointer:
            pause()
        return out

    os.fsync, os.rename, os.replace = fsync, rename, replace


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    import uvicorn

    from tests.service.conftest import make_service

    app, _ = make_service(args.dir)
    if os.environ.get("SERVE_FIXTURE_PAUSE_AT"):  # after the gallery exists: only a change through the API pauses
        install_pause_hook(os.environ["SERVE_FIXTURE_PAUSE_AT"], os.environ["SERVE_FIXTURE_MARKER"])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def app_from_env():
    from tests.service.conftest import make_service

    return make_service(os.environ["SERVE_FIXTURE_DIR"])[0]


if __name__ == "__main__":
    main()
