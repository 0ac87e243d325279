"""`python -m tests.service.serve_fixture --dir D --port P`: the real app (uvicorn) over the test gallery
(identity-like embedder, blob detector, the test admin keys), for the browser test; a subprocess like production.

Several workers: `SERVE_FIXTURE_DIR=D python -m uvicorn tests.service.serve_fixture:app_from_env --factory
--workers 2` (each worker opens the gallery in D)."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    import uvicorn

    from tests.service.conftest import make_service

    app, _ = make_service(args.dir)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def app_from_env():
    from tests.service.conftest import make_service

    return make_service(os.environ["SERVE_FIXTURE_DIR"])[0]


if __name__ == "__main__":
    main()
