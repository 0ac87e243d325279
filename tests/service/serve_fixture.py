"""`python -m tests.service.serve_fixture --dir D --port P`: the real app (uvicorn) over the test gallery
(identity-like embedder, blob detector), for the browser test; a subprocess like production."""

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


if __name__ == "__main__":
    main()
