#!/usr/bin/env python3
"""One training run on a lent accelerator, prepared to fit a device booking (< 9 minutes), and the
step that brings its state home.

The device machine receives a copy of the working tree and returns at most 8 files of 16 MiB from
$OUT, so a run's full training state (weights, AdamW moments, dense head, data cursor, random
state) travels as parts with a manifest of their sizes and SHA-256 sums:

    scripts/device_wheels.sh      # here, once: pycocotools for the device's Python, into .whl/
    # on the device machine (the `device` tool's `run`, carry [".whl"]; python3 there holds a
    # CUDA PyTorch but no pycocotools, which the script installs from .whl):
    python3 scripts/device_train.py run --out "$OUT" --minutes 7
    # here, with the files it brought back (files_at of that call):
    scripts/device_train.py join --parts FILES_AT --to runs/device/last.pth
    .venv/bin/clickpose train --resume runs/device/last.pth --export runs/device/weights.pth --licence "..."
    # (evaluate on seed 2 before these weights replace the demo weights: docs/training.md)
    # to continue in a later booking, commit the parts and the log where `run` looks for them:
    cp FILES_AT/state.part* FILES_AT/manifest.json FILES_AT/log.jsonl weights/device_state/

`run` regenerates the training data (the documented seed-1 set, rendered by every core), resumes
the state in `--state` if it holds a manifest, else starts the `--preset` from random weights with
the recipe below, trains for `--minutes`, and writes the state's parts, the loss log and a
summary to `--out`. Arguments after `--` go to `clickpose train` unchanged (a schedule change on
resume: `-- --lr-drop-step 30000`). Everything it runs is the ordinary CLI (`clickpose synth`,
`clickpose train`), so the CPU route is the same code with `--device cpu`; the tests run it so.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "manifest.json"
PART_PREFIX = "state.part"
MIB = 2 ** 20
# The device tool brings back at most 8 files of 16 MiB (64 MiB in all); run.log, log.jsonl,
# summary.json and the manifest take four.
MAX_PARTS = 4
# A new run's recipe: the demo run's (heatmap objective, one lr for trunk and transformer since
# nothing is pretrained, official clipping), with a batch that keeps an accelerator busy.
NEW_RUN = ["--heatmap-weight", "1", "--lr", "2e-4", "--lr-backbone", "2e-4", "--warmup-steps", "500",
           "--steps", "10000000", "--checkpoint-every", "1000", "--log-every", "50"]


# ---- parts ---------------------------------------------------------------------------------
def split(path: Path, out: Path, part_bytes: int, max_parts: int | None = None) -> dict:
    """Write `path` as out/state.part00, 01, ... of at most part_bytes each, and out/manifest.json
    (file name, total size, each part's size and sha256). Returns the manifest. ValueError, before
    writing anything, if that takes more than max_parts parts."""
    if part_bytes < 1:
        raise ValueError(f"part size must be positive, got {part_bytes} bytes")
    size = path.stat().st_size
    if max_parts is not None and -(-size // part_bytes) > max_parts:
        raise ValueError(f"{path} is {size / MIB:.1f} MiB: more than {max_parts} parts of "
                         f"{part_bytes / MIB:.1f} MiB, which is all that can be brought back")
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    with open(path, "rb") as f:
        while chunk := f.read(part_bytes):
            name = f"{PART_PREFIX}{len(parts):02d}"
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {"file": path.name, "bytes": sum(p["bytes"] for p in parts), "parts": parts}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def join(parts_dir: Path, to: Path) -> dict:
    """Reassemble the file a manifest in parts_dir describes into `to`, checking every part's size
    and sha256 first; ValueError naming the first part that is missing or differs."""
    manifest_path = parts_dir / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"no {MANIFEST} in {parts_dir}: not a folder of state parts")
    manifest = json.loads(manifest_path.read_text())
    blobs = []
    for part in manifest["parts"]:
        p = parts_dir / part["name"]
        if not p.is_file():
            raise ValueError(f"{p} is missing ({len(manifest['parts'])} parts are listed in {manifest_path})")
        data = p.read_bytes()
        if len(data) != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
            raise ValueError(f"{p} is not the part the manifest lists ({len(data)} bytes, expected "
                             f"{part['bytes']} with sha256 {part['sha256'][:12]}...)")
        blobs.append(data)
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(to.name + ".tmp")
    with open(tmp, "wb") as f:
        for data in blobs:
            f.write(data)
    os.replace(tmp, to)
    return manifest


# ---- the run -------------------------------------------------------------------------------
def clickpose(*args: str) -> list[str]:
    """The CLI as a command line: from this checkout, with whatever python3 runs this script
    (the device machine's has its own CUDA PyTorch; the package is not installed there)."""
    return [sys.executable, "-m", "clickpose_core.cli", *args]


def call(cmd: list[str], log, paths: list[Path]) -> None:
    """Run a command with `paths` first on its PYTHONPATH; SystemExit naming it if it fails."""
    print("+ " + " ".join(cmd), file=log, flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[3] if len(cmd) > 3 else cmd[0]} failed (exit {done.returncode}); "
                         f"see {log.name}")


def pycocotools_path(wheels: Path, work: Path) -> list[Path]:
    """[] where pycocotools imports; else install the wheel carried in `wheels` (the device machine
    has no package index) into work/site and return [work/site]."""
    try:
        import pycocotools  # noqa: F401  (the synthetic masks' RLE and the evaluation need it)
        return []
    except ImportError:
        pass
    found = sorted(wheels.glob("pycocotools-*.whl"))
    if not found:
        raise SystemExit(f"pycocotools is not installed for {sys.executable} and no wheel of it is in {wheels}: "
                         "run scripts/device_wheels.sh where you call the device from, and carry .whl")
    site = work / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--target", str(site), *map(str, found)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"could not install {', '.join(p.name for p in found)} for {sys.executable}: "
                         f"{done.stderr.strip() or done.stdout.strip()}")
    return [site]


def describe_device(device: str) -> dict:
    import torch
    info = {"torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {device}, but this PyTorch ({torch.__version__}) sees no CUDA device")
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run(args: argparse.Namespace) -> int:
    started = time.time()
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), **describe_device(args.device)}
    paths = [ROOT, *pycocotools_path(Path(args.wheels), work)]
    data, run_dir = work / "synth_train", work / "run"
    with open(out / "run.log", "w") as log:
        if not (data / "annotations.json").is_file():
            call(clickpose("synth", "--out", str(data), "--num-images", str(args.num_images), "--seed",
                           str(args.data_seed), "--size", args.size, "--format", "jpg",
                           "--workers", str(args.synth_workers)), log, paths)
        summary["data_s"] = round(time.time() - started, 1)
        state = Path(args.state)
        common = ["--images", str(data / "images"), "--annotations", str(data / "annotations.json"),
                  "--device", args.device, "--precision", args.precision, "--workers", str(args.loader_workers),
                  "--minutes", str(args.minutes), "--no-progress"]
        if (state / MANIFEST).is_file():
            join(state, run_dir / "last.pth")
            if (state / "log.jsonl").is_file():
                shutil.copy(state / "log.jsonl", run_dir / "log.jsonl")
            summary["resumed_at_step"] = checkpoint_step(run_dir / "last.pth")
            cmd = clickpose("train", "--resume", str(run_dir / "last.pth"), *common, *args.train_args)
        else:
            if (run_dir / "last.pth").exists():
                raise SystemExit(f"{run_dir} holds a run already; give --work a fresh folder")
            summary["resumed_at_step"] = None
            cmd = clickpose("train", "--out", str(run_dir), "--preset", args.preset, "--batch-size",
                            str(args.batch_size), *NEW_RUN, *common, *args.train_args)
        trained = time.time()
        try:
            call(cmd, log, paths)
        except SystemExit as e:   # a booking is scarce: bring back the last checkpoint it wrote
            if not (run_dir / "last.pth").exists():
                raise
            summary["error"] = str(e)
        summary["train_wall_s"] = round(time.time() - trained, 1)
    step, first = checkpoint_step(run_dir / "last.pth"), summary["resumed_at_step"] or 0
    new = [line for line in log_lines(run_dir / "log.jsonl") if first < line["step"] <= step]
    manifest = split(run_dir / "last.pth", out, int(args.part_mib * MIB), MAX_PARTS)
    shutil.copy(run_dir / "log.jsonl", out / "log.jsonl")
    summary.update(step=step, steps_this_run=step - first,
                   loss_first=new[0]["loss"] if new else None, loss_last=new[-1]["loss"] if new else None,
                   state_bytes=manifest["bytes"], parts=len(manifest["parts"]),
                   total_wall_s=round(time.time() - started, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    if "error" in summary:
        print(f"{summary['error']}; brought back the state of step {step} it had saved", file=sys.stderr)
        return 1
    return 0


def checkpoint_step(path: Path) -> int:
    import torch
    return int(torch.load(path, map_location="cpu", weights_only=True)["trainer"]["step"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="regenerate the data, train for --minutes, write the state's parts to --out")
    r.add_argument("--out", required=True, help="folder for the parts, manifest.json, log.jsonl, summary.json")
    r.add_argument("--state", default=str(ROOT / "weights" / "device_state"),
                   help="parts of a state to resume (default weights/device_state; a new run if it has none)")
    r.add_argument("--work", default="/tmp/clickpose_device", help="data and run folder on this machine")
    r.add_argument("--minutes", type=float, default=7.0, help="training time (default 7: the whole call < 9 min)")
    r.add_argument("--device", default="cuda")
    r.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    r.add_argument("--preset", default="medium", help="a new run's model (default medium)")
    r.add_argument("--batch-size", type=int, default=32, help="a new run's batch (default 32)")
    r.add_argument("--num-images", type=int, default=4000, help="training images (default 4000, seed 1: the demo set)")
    r.add_argument("--data-seed", type=int, default=1)
    r.add_argument("--size", default="384x512")
    r.add_argument("--synth-workers", type=int, default=os.cpu_count() or 1)
    r.add_argument("--loader-workers", type=int, default=min(8, os.cpu_count() or 1))
    r.add_argument("--wheels", default=str(ROOT / ".whl"),
                   help="wheels to install where a package is missing (default .whl: scripts/device_wheels.sh)")
    r.add_argument("--part-mib", type=float, default=15.9, help="largest part (default 15.9 MiB: under 16)")
    r.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more `clickpose train` arguments")
    j = sub.add_parser("join", help="reassemble brought-back parts into a training checkpoint")
    j.add_argument("--parts", required=True, help="folder with manifest.json and state.part*")
    j.add_argument("--to", required=True, help="the checkpoint to write (e.g. runs/device/last.pth)")
    args = parser.parse_args(argv)
    if args.command == "join":
        try:
            manifest = join(Path(args.parts), Path(args.to))
        except ValueError as e:
            raise SystemExit(str(e)) from None
        print(f"wrote {args.to} ({manifest['bytes'] / MIB:.1f} MiB from {len(manifest['parts'])} parts)")
        return 0
    if args.train_args[:1] == ["--"]:
        args.train_args = args.train_args[1:]
    if not args.minutes > 0:
        raise SystemExit(f"--minutes must be positive, not {args.minutes}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
