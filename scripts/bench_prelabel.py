"""Throughput of `clickpose-ls prelabel` against the model's own full-forward rate, in one run.

Starts a real Label Studio on 127.0.0.1 (from .venv-ls), imports N synthetic 640x480 images, and
pre-labels them with `clickpose-ls prelabel`, serial and with `--ray --actors 2` (2 actors x 1
torch thread), for the R50 preset (random weights: timing does not depend on their values) and
the demo weights. The steady rate (model ready to last write, so weight loading, the snapshot and
Ray start-up are left out) is compared with the in-process full forward of the same images,
measured just before and after each run. A short warm-up run goes first: Label Studio answers
its first requests slowly.
Usage:
    .venv/bin/python scripts/bench_prelabel.py [--images 8] [--only r50|demo]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "backend")]

from backend_fixtures import payload, person_image  # noqa: E402
from servers import LS_TOKEN, start_label_studio, stop  # noqa: E402

HEADERS = {"Authorization": f"Token {LS_TOKEN}"}


def r50_weights(work: Path) -> str:
    import torch

    from clickpose_core import ClickPoseConfig, build_model
    from clickpose_core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = work / "random-r50.pth"
    save_checkpoint(path, build_model(ClickPoseConfig.r50()).eval(), meta={"licence": "bench"})
    return str(path)


def images(n: int) -> list[bytes]:
    return [person_image(640, 480 - 8 * (i % 4), fmt="JPEG") for i in range(n)]


def new_project(url: str, files: list[bytes]) -> int:
    project = requests.post(url + "/api/projects", headers=HEADERS, timeout=60,
                            json={"title": "bench", "label_config": payload("02_setup")["schema"]}).json()["id"]
    upload = {f"f{i}": (f"img{i}.jpg", io.BytesIO(b), "image/jpeg") for i, b in enumerate(files)}
    requests.post(url + f"/api/projects/{project}/import", headers=HEADERS, files=upload, timeout=120).raise_for_status()
    return project


def forward_rate(weights: str, files: list[bytes], threads: int) -> float:
    """Images per second of `Predictor.predict` alone (median over the images, first one discarded)."""
    import torch

    from clickpose_core.image import load_image
    from clickpose_core.predictor import Predictor

    torch.set_num_threads(threads)
    predictor = Predictor.from_checkpoint(weights, cache_size=1)
    arrays = [load_image(b) for b in files]
    times = []
    for i, image in enumerate([arrays[0]] + arrays):
        t = time.perf_counter()
        predictor.predict(f"k{i}", image)
        times.append(time.perf_counter() - t)
        predictor.clear()
    return 1.0 / statistics.median(times[1:])


def prelabel(url: str, project: int, weights: str, mv: str, work: Path, *extra: str) -> dict:
    report = work / f"report-{project}-{mv}.json"
    cmd = [sys.executable, "-m", "backend.cli", "prelabel", "--url", url, "--api-key", LS_TOKEN,
           "--project", str(project), "--weights", weights, "--model-version", mv, "--no-progress",
           "--report", str(report), *extra]
    t = time.perf_counter()
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t
    if run.returncode != 0:
        raise RuntimeError(f"prelabel failed ({run.returncode}):\n{run.stderr[-3000:]}")
    data = json.loads(report.read_text())
    data["wall"] = wall
    return data


def bench(name: str, weights: str, url: str, n: int, work: Path) -> list[str]:
    """Each prelabel run is framed by the model's own rate measured just before and after it: the
    CPU is shared, so the load can change between measurements."""
    files = images(n)
    project = new_project(url, files)
    few = files[: max(3, n // 3)]
    prelabel(url, project, weights, "warm-up", work, "--limit", "4")   # Label Studio's first requests are slow
    before2 = forward_rate(weights, few, threads=2)
    serial = prelabel(url, project, weights, "serial", work)
    rate2 = (before2 + forward_rate(weights, few, threads=2)) / 2
    before1 = forward_rate(weights, few, threads=1)
    ray = prelabel(url, project, weights, "ray", work, "--ray", "--actors", "2")
    rate1 = (before1 + forward_rate(weights, few, threads=1)) / 2
    rows = []
    for label, report, reference, ref_name in (("serial", serial, rate2, "forward, 2 threads"),
                                               ("`--ray --actors 2` (1 thread each)", ray, 2 * rate1,
                                                "2 x forward, 1 thread")):
        rate = report["steady_tasks_per_s"]
        rows.append(f"| {name} | {label} | {rate:.3f} | {len(report['done'])} in {report['wall']:.1f} s | "
                    f"{reference:.3f} ({ref_name}) | **{rate / reference:.2f}x** |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--only", choices=("r50", "demo"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clickpose-bench-prelabel-"))
    ls = start_label_studio(work)
    try:
        rows = []
        if args.only in (None, "demo"):
            rows += bench("demo", str(REPO / "weights" / "clickpose_demo_synthetic.pth"), ls.url, args.images * 4, work)
        if args.only in (None, "r50"):
            rows += bench("R50", r50_weights(work), ls.url, args.images, work)
        print(f"cpus: {os.cpu_count()}  (steady rate: model ready to last write, images/s)")
        print("| weights | prelabel | images/s | tasks, wall time of the command | model's own rate | ratio |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))
    finally:
        stop(ls.proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
