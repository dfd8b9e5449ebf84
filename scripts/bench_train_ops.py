#!/usr/bin/env python3
"""Operations dispatched by one training step, by batch size: the figure that bounds a training
step on an accelerator, where a network of this size is launch-bound (each operation costs a few
microseconds of CPU-side dispatch and a kernel launch whatever its size). Measured on the CPU: the
sampler is given its accelerator chunking (one pass at these sizes), so the count is what a GPU step would
launch (plus the optimizer's per-parameter updates, which torch's AdamW fuses on CUDA).

    .venv/bin/python scripts/bench_train_ops.py --preset medium --batch-sizes 2,8

Prints, per batch size, the dispatched operations of one step (forward, backward, optimizer;
median of --steps steps after one warm-up; two click rounds each) and the fitted cost per image.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clickpose_core.model import deformable_attention  # noqa: E402
from clickpose_core.training import feedback  # noqa: E402
from clickpose_core.training.command import PRESETS, build_model  # noqa: E402
from clickpose_core.training.data import CocoKeypoints  # noqa: E402
from clickpose_core.training.engine import TrainConfig, Trainer  # noqa: E402


class CountOps(TorchDispatchMode):
    """Counts every ATen operation dispatched while active (autograd's backward included)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(preset: str, batch: int, steps: int, images: str, annotations: str) -> int:
    cfg = PRESETS[preset]()
    torch.manual_seed(0)
    data = CocoKeypoints(images, annotations, cfg, train=True, seed=0)
    trainer = Trainer(build_model(cfg), data, TrainConfig(steps=10 ** 9, batch_size=batch, heatmap_weight=1.0),
                      "/nonexistent-run-dir")   # train_step writes nothing
    counts = []
    for i, batch_data in zip(range(steps + 1), trainer.batches()):
        counter = CountOps()
        with counter:
            trainer.train_step(*batch_data)
        trainer._took_a_step()
        if i:
            counts.append(counter.count)
    return int(statistics.median(counts))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="medium", choices=sorted(PRESETS))
    p.add_argument("--batch-sizes", default="2,8")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--images", default="data/synth_train_s1/images")
    p.add_argument("--annotations", default="data/synth_train_s1/annotations.json")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (only the CPU sampler's chunking depends on them)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if hasattr(deformable_attention, "queries_per_chunk"):   # absent before the sampler knew devices
        policy = deformable_attention.queries_per_chunk        # its accelerator chunking, on the CPU
        deformable_attention.queries_per_chunk = lambda device, *shape: policy(torch.device("cuda"), *shape)
    # The number of click rounds is drawn per step (1..K, power law, mean 2.2) and each round is a
    # pass of the feedback layers: fixed at 2 here, so that the batch sizes' counts compare.
    feedback.power_law_count = lambda maximum, power, generator, size=1: torch.full((size,), 2)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = [(b, ops_per_step(args.preset, b, args.steps, args.images, args.annotations)) for b in sizes]
    print(f"preset {args.preset}: dispatched operations per training step (median of {args.steps})")
    for b, n in rows:
        print(f"  batch {b:3d}: {n:7d}  ({n / b:6.0f} per image)")
    if len(rows) > 1:
        (b0, n0), (b1, n1) = rows[0], rows[-1]
        slope = (n1 - n0) / (b1 - b0)
        print(f"  fit: {n0 - slope * b0:.0f} + {slope:.0f} x batch; at batch 32: {n0 + slope * (32 - b0):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
