#!/usr/bin/env python3
"""Compare training recipes on the same wall-clock budget (the A/B table of docs/training.md).

Each arm is `clickpose train` with the common arguments plus its own, stopped by `--minutes`; arms
run `--parallel` at a time (one thread each: on a 2-core machine two arms share the machine the
same way). Afterwards every arm's last snapshot is evaluated on the monitoring set (never the
held-out seed 777) and one table is printed: steps, images/s, keypoint AP@0, box AP@0.

    scripts/compare_recipes.py --out runs/ab --minutes 20 \\
        --common "--images data/synth_train_s1/images --annotations data/synth_train_s1/annotations.json \\
                  --init weights/clickpose_demo_synthetic.pth --lr 2e-4 --lr-backbone 2e-4 --warmup-steps 200" \\
        --arm "baseline=" --arm "heatmap=--heatmap-weight 1" --val data/synth_val_s2
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time

BIN = os.path.join(os.path.dirname(sys.executable), "clickpose")


def parse_arm(text: str) -> tuple[str, list[str]]:
    name, sep, extra = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"an arm is NAME=ARGS, got {text!r}")
    return name.strip(), shlex.split(extra)


def train_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    common = shlex.split(args.common)
    return {name: [BIN, "train", *common, *extra, "--out", os.path.join(args.out, name), "--steps", "10000000",
                   "--minutes", str(args.minutes), "--checkpoint-every", "500", "--log-every", "20",
                   "--threads", "1", "--no-progress"]
            for name, extra in args.arm}


def run_batches(commands: dict[str, list[str]], parallel: int, out: str) -> None:
    pending = list(commands.items())
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        procs = []
        for name, cmd in batch:
            log = open(os.path.join(out, f"{name}.train.log"), "w")
            procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                 env={**os.environ, "OMP_NUM_THREADS": "1"})))
            print(f"started {name} (pid {procs[-1][1].pid})", flush=True)
        for name, proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"arm {name} failed: see {os.path.join(out, name + '.train.log')}")


def evaluate(out: str, name: str, val: str, limit: int) -> dict:
    run = os.path.join(out, name)
    snapshot = sorted(glob.glob(os.path.join(run, "step_*.pth")))[-1]
    result_dir = os.path.join(out, f"{name}.eval")
    subprocess.run([BIN, "eval", "--data", val, "--weights", snapshot, "--out", result_dir, "--modes", "pinned",
                    "--clicks", "0,3", "--box-clicks", "0", "--limit", str(limit)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    with open(os.path.join(result_dir, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(run, "log.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    with open(os.path.join(run, "train_config.json")) as f:
        train = json.load(f)["train"]
    images = last["step"] * train["batch_size"] * train.get("processes", 1)
    pinned = next(r for r in results["results"] if r["mode"] == "clickpose-pinned")
    return {"arm": name, "steps": last["step"], "images_per_s": images / last["elapsed_s"],
            "ap0": 100 * pinned["keypoint_ap"]["0"]["AP"], "ap3": 100 * pinned["keypoint_ap"]["3"]["AP"],
            "box_ap0": 100 * pinned["box_ap"]["0"]["AP"], "loss": last["loss"], "snapshot": snapshot}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, required=True, help="training time of every arm")
    p.add_argument("--common", required=True, help="clickpose train arguments shared by every arm")
    p.add_argument("--arm", type=parse_arm, action="append", required=True, help="NAME=EXTRA ARGS (repeat)")
    p.add_argument("--val", required=True, help="monitoring set (not the held-out evaluation set)")
    p.add_argument("--limit", type=int, default=100, help="images of --val to evaluate")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--eval-only", action="store_true", help="evaluate arms that already ran")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    if not args.eval_only:
        run_batches(train_commands(args), args.parallel, args.out)
    rows = [evaluate(args.out, name, args.val, args.limit) for name, _ in args.arm]
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\n{args.minutes:g} min per arm, evaluated on the first {args.limit} images of {args.val} "
          f"({(time.time() - started) / 60:.0f} min in all)")
    print("| arm | steps | images/s | loss (last window) | AP@0 | AP@3 | box AP@0 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['steps']} | {r['images_per_s']:.2f} | {r['loss']:.1f} | {r['ap0']:.1f} | "
              f"{r['ap3']:.1f} | {r['box_ap0']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
