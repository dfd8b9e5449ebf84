"""Weight averaging of a run's snapshots (`clickpose train --export ... --average-since STEP`).

At a constant learning rate the weights wander around a minimum from snapshot to snapshot; their
mean sits nearer its centre, which does much of what a learning-rate decay would, at no training
cost (stochastic weight averaging, Izmailov et al. 2018). The network has no running batch-norm
statistics (its norms are frozen), so the mean of the weights is a complete model.
"""
from __future__ import annotations

import os
import re

import torch
from torch import Tensor

from ..checkpoint import read_checkpoint

_SNAPSHOT = re.compile(r"^step_(\d+)\.pth$")


def run_snapshots(run_dir: str, since: int) -> list[tuple[int, str]]:
    """(step, path) of the run folder's `step_N.pth` snapshots with N >= since, in step order."""
    found = []
    for name in os.listdir(run_dir):
        m = _SNAPSHOT.match(name)
        if m and int(m[1]) >= since:
            found.append((int(m[1]), os.path.join(run_dir, name)))
    return sorted(found)


def average_weights(paths: list[str]) -> dict[str, Tensor]:
    """The element-wise mean of the snapshots' floating-point tensors (summed in float64, returned
    in float32); other tensors are taken from the last snapshot. All must be one architecture."""
    if not paths:
        raise ValueError("no snapshots to average")
    first = read_checkpoint(paths[0])
    sums = {k: v.double() if v.is_floating_point() else v for k, v in first.state_dict.items()}
    for path in paths[1:]:
        ckpt = read_checkpoint(path)
        if ckpt.config != first.config or ckpt.state_dict.keys() != sums.keys():
            raise ValueError(f"{path} is not the same network as {paths[0]}; only one run's snapshots average")
        for k, v in ckpt.state_dict.items():
            sums[k] = sums[k] + v.double() if v.is_floating_point() else v
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in sums.items()}
