"""Load benchmark of the HTTP service: a real uvicorn on localhost, N clients checking out a counter photo in a
loop while one writer adds, re-prices and removes a product through the API; requests, failures, torn
receipts and checkout latency p50/p99 per configuration, written to experiments/service_load/README.md.

    python scripts/bench_service_load.py [--workers 1 2] [--clients 4] [--seconds 20] [--out DIR]

The service is tests/service/serve_fixture.py: the 6-product studio gallery with the identity-like embedder
and a blob detector, so the figures are the service's own cost (HTTP, upload decoding, detection, search,
gallery reloads and saves under the file lock), not a trained model's. The receipt check is the one of
tests/service/test_load.py. Run it alone (under `flock /tmp/heavy.lock` on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.recognition.helpers import counter_photo  # noqa: E402
from tests.service.conftest import png  # noqa: E402
from tests.service.live_server import start_server  # noqa: E402
from tests.service.test_load import A, C, X, check_receipt, run_load  # noqa: E402


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem = next((int(line.split()[1]) // 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    import fastapi
    import uvicorn

    return (f"{cpu}, {os.cpu_count()} logical CPUs, {mem} GiB RAM; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, uvicorn {uvicorn.__version__}, fastapi {fastapi.__version__}; "
            f"load average 1/5/15 min at the start: {load}")


def bench(workers: int, clients: int, seconds: float) -> dict:
    photo = png(counter_photo([A, X, C], 3)[0])
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "gallery", workers=workers)
        try:
            t0 = time.perf_counter()
            run = run_load(server.url, clients=clients, seconds=seconds, photo=photo)
            wall = time.perf_counter() - t0
        finally:
            server.kill(15)
    ok = [(body, dt) for status, body, dt in run["results"] if status == 200]
    lat = np.array([dt for _, dt in ok]) * 1e3
    torn = sum(bool(check_receipt(body, run["x_prices"])) for body, _ in ok)
    x_seen = sum("x" in {line["sku"] for line in body["items"]} for body, _ in ok)
    return {"workers": workers, "clients": clients, "seconds": round(wall, 1), "requests": len(run["results"]),
            "failed": len(run["results"]) - len(ok), "torn": torn, "x_priced": x_seen,
            "writes": len(run["writes"]), "writes_failed": sum(s != 200 for s in run["writes"]),
            "rps": len(run["results"]) / wall, "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "max": float(lat.max()) if len(lat) else float("nan")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--out", default=str(ROOT / "experiments" / "service_load"))
    args = p.parse_args(argv)
    facts = machine()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for w in args.workers:
        r = bench(w, args.clients, args.seconds)
        print(r, flush=True)
        rows.append(r)
    command = "python scripts/bench_service_load.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    table = ["| workers | clients | seconds | checkout requests | failed | torn receipts | receipts with x priced "
             "| writes (add/price/remove) | failed writes | requests/s | p50 ms | p99 ms | max ms |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['workers']} | {r['clients']} | {r['seconds']} | {r['requests']} | {r['failed']} | {r['torn']} "
              f"| {r['x_priced']} | {r['writes']} | {r['writes_failed']} | {r['rps']:.1f} | {r['p50']:.0f} "
              f"| {r['p99']:.0f} | {r['max']:.0f} |" for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(f"""# Service under load: checkouts while the gallery changes

`scripts/bench_service_load.py` ({started}): a real `uvicorn` on localhost (`--workers N`), {args.clients} client
threads posting a counter photo to `POST /checkout` in a loop (a new connection per request), while one writer
cycles a product `x` through the API: add (a new price each cycle), `PATCH` its price, `DELETE` it. The photo
shows two shop products and `x`. Every receipt is checked as in `tests/service/test_load.py`: the two shop
products priced once at their prices, `x` priced at a price it had in some committed version or listed as one
unknown box (while removed), line totals and total consistent in cents; *torn* counts receipts that fail it.

Command (run alone on the machine, under `flock /tmp/heavy.lock`):

```bash
GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 NO_ALBUMENTATIONS_UPDATE=1 \\
    {command}
```

Machine: {facts}.

{chr(10).join(table)}

What this measures: the service's own cost and correctness under concurrent reads and writes (HTTP, upload
decoding, the blob detector of the tests, search, the reload of a changed gallery before a request, saves
under the directory's file lock), with the tests' identity-like embedder, not a trained model: with the
EfficientNet-Lite0 embedder a checkout adds its embedding time per box (experiments/recognition_bench).
Latency is per checkout request, client side, including the connection. Each worker follows the gallery
folder, so with 2 workers a change made through one is served by both from their next request; every
change holds the folder's lock, so writes also wait for each other across workers.

Tests that hold the same properties in the fast suite: `tests/service/test_load.py` (4 clients, 8 s,
`--workers 2`), `tests/service/test_faults.py` (kill -9 during saves, bad requests).
""")
    print(f"wrote {out / 'README.md'}")


if __name__ == "__main__":
    main()
