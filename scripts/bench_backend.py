"""Latency through HTTP: pre-annotation of one image vs. one interactive refinement (warm cache).

Starts the backend under gunicorn and a loopback image server, then times `/predict` as Label
Studio calls it. Usage:
    .venv/bin/python scripts/bench_backend.py [--weights PATH | --preset r50|small|tiny] [--runs N]
Without --weights a randomly initialised model of the preset is used (timing does not depend on
the weight values).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "backend")]

from backend_fixtures import FakeLabelStudio, TOKEN, payload  # noqa: E402
from servers import start_backend, stop  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights")
    ap.add_argument("--preset", default="r50", choices=["r50", "small", "tiny"])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4, help="tasks in the batch pre-annotation request")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clickpose-bench-"))
    weights = args.weights
    if weights is None:
        import torch

        from clickpose_core import ClickPoseConfig, build_model
        from clickpose_core.checkpoint import save_checkpoint
        torch.manual_seed(0)
        weights = str(work / f"random-{args.preset}.pth")
        save_checkpoint(weights, build_model(getattr(ClickPoseConfig, args.preset)()).eval(), meta={"licence": "bench"})
    files = FakeLabelStudio()
    backend = start_backend(work, weights, files.url)
    try:
        session = requests.Session()
        setup = payload("02_setup")
        setup["hostname"], setup["access_token"] = files.url, TOKEN
        session.post(backend.url + "/setup", json=setup).raise_for_status()
        body = payload("05_predict_single")
        pre, ref = [], []
        for i in range(args.runs + 1):
            body["tasks"][0]["id"] = 1000 + i          # a new task: full model every time
            t = time.perf_counter()
            session.post(backend.url + "/predict", json=body).raise_for_status()
            pre.append((time.perf_counter() - t) * 1000)
        click = payload("21_browser_A")
        click["tasks"][0]["id"] = 1000 + args.runs       # the last pre-annotated task: warm cache
        smart = click["params"]["context"]["result"][1]
        for i in range(args.runs + 1):
            smart["value"]["x"] = 40.0 + (i % 5)         # a drag: every call is a new click position
            t = time.perf_counter()
            session.post(backend.url + "/predict", json=click).raise_for_status()
            ref.append((time.perf_counter() - t) * 1000)
        batch = []
        for i in range(max(2, args.runs // 2) + 1):    # many tasks in one request, as "Retrieve Predictions" sends
            tasks = []
            for j in range(args.batch):
                task = copy.deepcopy(body["tasks"][0])
                task["id"] = 5000 + i * args.batch + j
                tasks.append(task)
            t = time.perf_counter()
            r = session.post(backend.url + "/predict", json={**body, "tasks": tasks})
            r.raise_for_status()
            batch.append((time.perf_counter() - t) * 1000 / args.batch)
            assert len(r.json()["results"]) == args.batch
        p_pre, p_ref = statistics.median(pre[1:]), statistics.median(ref[1:])
        p_batch = statistics.median(batch[1:])
        version = session.get(backend.url + "/health").json()["model_version"]
        print(f"weights: {version}  runs: {args.runs}  (first call of each kind discarded)")
        print(f"pre-annotation, one 640x480 image, HTTP round trip: p50 {p_pre:.1f} ms  (min {min(pre[1:]):.1f})")
        print(f"batch pre-annotation, {args.batch} tasks per request: p50 {p_batch:.1f} ms per image "
              f"({p_batch / p_pre:.2f}x the single-image time)")
        print(f"interactive refinement, warm cache, HTTP round trip: p50 {p_ref:.1f} ms  (min {min(ref[1:]):.1f})")
        print(f"ratio pre-annotation / refinement: {p_pre / p_ref:.1f}x  (paper, GPU: 48 ms / 12 ms = 4x)")
        print(f"refinement target <= 80 ms p50: {'MET' if p_ref <= 80 else 'NOT MET'}")
    finally:
        stop(backend.proc)
        files.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
