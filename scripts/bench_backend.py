"""Latency through HTTP: pre-annotation of one image vs. one interactive refinement (warm cache).

Starts the backend under gunicorn and a loopback image server, then times `/predict` as Label
Studio calls it. Usage:
    .venv/bin/python scripts/bench_backend.py [--weights PATH | --preset r50|small|tiny] [--runs N]
    .venv/bin/python scripts/bench_backend.py --load [--clicks N] [--pre-clients 2] [--max-seconds S] ...
Without --weights a randomly initialised model of the preset is used (timing does not depend on
the weight values).

--load is the bounded load test: an annotator's refinements (drags of one smart point on a warm
task) alone; `--pre-clients` clients pre-annotating new tasks back to back alone; then both at
once. It prints interactive p50/p90/p99 and pre-annotation latency and throughput, alone and
together. Loopback only;
every loop is bounded in count and in time (--max-seconds per phase).
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import threading
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
    ap.add_argument("--load", action="store_true", help="the load test (interactive latency under pre-annotation)")
    ap.add_argument("--clicks", type=int, default=60, help="--load: refinements timed per phase")
    ap.add_argument("--pre-clients", type=int, default=2, help="--load: concurrent pre-annotation clients")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="--load: time limit of each phase")
    ap.add_argument("--pre-seconds", type=float, default=20.0, help="--load: length of the pre-annotation-only phase")
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
    if args.load:
        try:
            return load_test(backend.url, files.url, args)
        finally:
            stop(backend.proc)
            files.close()
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


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def describe(name: str, ms: list[float]) -> str:
    return (f"{name}: n={len(ms)}  p50 {percentile(ms, 50):.1f} ms  p90 {percentile(ms, 90):.1f} ms  "
            f"p99 {percentile(ms, 99):.1f} ms  max {max(ms):.1f} ms")


def load_test(url: str, files_url: str, args) -> int:
    session = requests.Session()
    setup = payload("02_setup")
    setup["hostname"], setup["access_token"] = files_url, TOKEN
    session.post(url + "/setup", json=setup).raise_for_status()
    click = payload("21_browser_A")
    click["tasks"][0]["id"] = 90_000
    smart = click["params"]["context"]["result"][1]
    session.post(url + "/predict", json=click).raise_for_status()     # warm: the session exists now

    def refinements() -> list[float]:
        out, deadline = [], time.monotonic() + args.max_seconds
        for i in range(args.clicks):
            if time.monotonic() > deadline:
                break
            smart["value"]["x"] = 40.0 + (i % 7) * 0.5          # a drag: a new click position every call
            t = time.perf_counter()
            session.post(url + "/predict", json=click, timeout=300).raise_for_status()
            out.append((time.perf_counter() - t) * 1000)
            time.sleep(0.05)                                    # an annotator does not click back to back
        return out

    solo = refinements()
    body = payload("05_predict_single")
    counter = iter(range(10**6))

    def pre_phase(seconds: float, during=None) -> tuple[list[float], float]:
        """`--pre-clients` clients pre-annotate new tasks until `during` returns (or for `seconds`)."""
        stop_flag, lock, ms = threading.Event(), threading.Lock(), []

        def client() -> None:
            s = requests.Session()
            for _ in range(1000):
                if stop_flag.is_set():
                    return
                task = copy.deepcopy(body)
                with lock:
                    task["tasks"][0]["id"] = 100_000 + next(counter)     # a new task each time: full model
                t = time.perf_counter()
                s.post(url + "/predict", json=task, timeout=300).raise_for_status()
                with lock:
                    ms.append((time.perf_counter() - t) * 1000)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.pre_clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        result = None
        if during is None:
            time.sleep(seconds)
        else:
            time.sleep(1.0)                                     # the clients are inside a forward now
            result = during()
        stop_flag.set()
        for t in threads:
            t.join(args.max_seconds + 300)
        return ms, len(ms) / (time.perf_counter() - started), result

    pre_solo, rate_solo, _ = pre_phase(args.pre_seconds)
    pre_loaded, rate_loaded, loaded = pre_phase(0, during=refinements)
    version = session.get(url + "/health").json()["model_version"]
    print(f"weights: {version}  load test: {args.clicks} refinements per phase, {args.pre_clients} pre-annotation "
          f"clients (one 640x480 image per request)")
    print(describe("interactive solo            ", solo))
    print(describe("interactive under pre-ann.  ", loaded))
    print(describe("pre-annotation alone        ", pre_solo))
    print(describe("pre-annotation with clicks  ", pre_loaded))
    print(f"pre-annotation throughput: {rate_solo:.2f} images/s alone, {rate_loaded:.2f} images/s while the "
          f"annotator clicks; interactive p50 loaded/solo {percentile(loaded, 50) / percentile(solo, 50):.2f}x, "
          f"p99 {percentile(loaded, 99) / percentile(solo, 99):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
