"""Retrieval evaluation cost: our metric path (src.retrieval.metrics.evaluate_retrieval: chunked exact Faiss
search + numpy metrics) vs pytorch-metric-learning's AccuracyCalculator (Faiss IndexFlatL2 over all queries at
once, torch metrics) on the same random clustered, L2-normalised embeddings.

    .venv/bin/python scripts/bench_retrieval_eval.py [--queries 10000 --gallery 100000 --dim 512]
        [--classes 1000] [--pml-budget 150] [--json out.json]

Each measurement runs in a fresh child process (so peak RSS belongs to one method): it loads the embeddings,
starts tracemalloc and an RSS poller, evaluates once, and reports wall time, the tracemalloc peak (Python and
numpy allocations; torch's CPU allocator and Faiss are invisible to it) and the growth of peak RSS over the
RSS right after loading the data (everything, including Faiss and torch; peak = max of a 5 ms RSS poller and
getrusage's ru_maxrss). Both compute recall@1 / precision_at_1, MAP@R and
R-precision; AccuracyCalculator uses k="max_bin_count" (k=None would search the whole gallery per query) and
excludes the clustering metrics (NMI/AMI run k-means). If AccuracyCalculator exceeds --pml-budget seconds at a
size, the next smaller size is tried and our path is measured there too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

FALLBACK_GALLERY_FRACTIONS = (1.0, 0.5, 0.2, 0.1)


def clustered(n: int, centres: np.ndarray, labels: np.ndarray, noise: float, rng) -> np.ndarray:
    """Unit vectors around their class centre; `noise` is the noise norm relative to the (unit) centre."""
    d = centres.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 20000):
        e = min(n, s + 20000)
        x = centres[labels[s:e]] + rng.standard_normal((e - s, d), dtype=np.float32) * (noise / np.sqrt(d))
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def make_data(folder: Path, nq: int, ng: int, dim: int, classes: int, noise: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ql, gl = rng.integers(classes, size=nq), rng.integers(classes, size=ng)
    np.save(folder / "q.npy", clustered(nq, centres, ql, noise, rng))
    np.save(folder / "g.npy", clustered(ng, centres, gl, noise, rng))
    np.save(folder / "ql.npy", ql)
    np.save(folder / "gl.npy", gl)


def maxrss_mb() -> float:
    """Peak RSS of this process so far (getrusage; KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): less sensitive than wall time to other load."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mb() -> float:
    """Current RSS (/proc/self/statm)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler(threading.Thread):
    """Polls the current RSS every few ms: catches a peak that is lower than an earlier one (getrusage's
    lifetime maximum cannot). Faiss and torch release the GIL while they compute, so the thread keeps running."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak, self._halt = interval, rss_mb(), threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return max(self.peak, rss_mb())


def child(method: str, folder: Path) -> dict:
    q, g = np.load(folder / "q.npy"), np.load(folder / "g.npy")
    ql, gl = np.load(folder / "ql.npy"), np.load(folder / "gl.npy")
    if method == "ours":
        from src.retrieval.metrics import evaluate_retrieval

        def run():
            m = evaluate_retrieval(q, ql, g, gl, ks=(1,))
            return {"recall@1": m["recall@1"], "map@r": m["map@r"], "r_precision": m["r_precision"]}
    else:
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                  k="max_bin_count", device=torch.device("cpu"))

        def run():
            m = calc.get_accuracy(q, ql, g, gl, ref_includes_query=False)
            return {"recall@1": m["precision_at_1"], "map@r": m["mean_average_precision_at_r"],
                    "r_precision": m["r_precision"]}
    base, lifetime_before = rss_mb(), maxrss_mb()
    sampler = PeakSampler()
    sampler.start()
    tracemalloc.start()
    t, cpu = time.perf_counter(), cpu_seconds()
    metrics = run()
    seconds, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sampled = sampler.stop()
    lifetime_after = maxrss_mb()
    # getrusage only helps if the evaluation raised the lifetime peak; else the sampled peak is the answer.
    peak = max(sampled, lifetime_after if lifetime_after > lifetime_before else 0.0)
    return {"method": method, "seconds": seconds, "cpu_seconds": cpu, "tracemalloc_peak_mb": traced_peak / 2**20,
            "rss_after_load_mb": base, "rss_peak_mb": peak, "rss_growth_mb": peak - base,
            "maxrss_before_mb": lifetime_before, "maxrss_after_mb": lifetime_after,
            "metrics": {k: float(v) for k, v in metrics.items()}}


def measure(method: str, folder: Path, timeout: float) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", method, "--data", str(folder)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        raise RuntimeError(f"{method} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--gallery", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=3.0, help="noise norm / centre norm (sets the difficulty)")
    ap.add_argument("--pml-budget", type=float, default=150.0, help="seconds allowed to AccuracyCalculator")
    ap.add_argument("--ours-timeout", type=float, default=600.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", choices=("ours", "pml"), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.data)))
        return {}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frac in FALLBACK_GALLERY_FRACTIONS:
            nq, ng = max(1, int(args.queries * frac)), max(1, int(args.gallery * frac))
            folder = Path(tmp) / f"{nq}x{ng}"
            folder.mkdir()
            make_data(folder, nq, ng, args.dim, args.classes, args.noise)
            ours = measure("ours", folder, args.ours_timeout)
            pml = measure("pml", folder, args.pml_budget)
            for r in (ours, pml):
                if r is not None:
                    r.update({"queries": nq, "gallery": ng, "dim": args.dim})
                    rows.append(r)
                    print(r, flush=True)
            if pml is None:
                print(f"AccuracyCalculator exceeded {args.pml_budget:.0f} s at {nq} x {ng}", flush=True)
                rows.append({"method": "pml", "queries": nq, "gallery": ng, "dim": args.dim,
                             "timed_out_after_s": args.pml_budget})
                continue
            break
    print("\n| queries x gallery x dim | method | wall (s) | CPU (s) | peak RSS growth (MB) | tracemalloc peak (MB) "
          "| recall@1 | MAP@R | R-precision |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        size = f"{r['queries']} x {r['gallery']} x {r['dim']}"
        name = "ours (evaluate_retrieval)" if r["method"] == "ours" else "PML AccuracyCalculator"
        if "timed_out_after_s" in r:
            print(f"| {size} | {name} | > {r['timed_out_after_s']:.0f} (stopped) | | | | | | |")
            continue
        m = r["metrics"]
        print(f"| {size} | {name} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['rss_growth_mb']:.0f} "
              f"| {r['tracemalloc_peak_mb']:.0f} | {m['recall@1']:.4f} | {m['map@r']:.4f} | {m['r_precision']:.4f} |")
    result = {"args": {k: v for k, v in vars(args).items() if k not in ("child", "data", "json")}, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
