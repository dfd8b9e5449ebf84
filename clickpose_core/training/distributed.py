"""Data-parallel training over several processes on one machine (`clickpose train --processes N`).

The small network's operations are too small to split across threads (a second thread makes a step
only a few percent faster), but independent processes scale with cores: each process trains on its
share of every global batch and the gradients are averaged (gloo all-reduce over loopback) before
the optimizer step, so every process holds the same weights after every step. `ClickPose` is used
through `encode`/`decode`/`refine`, not `forward`, so gradients are averaged here by hand rather
than by `DistributedDataParallel`.

The processes meet through a file in a private temporary folder and talk over the loopback
interface only: no port is opened beyond 127.0.0.1 (torch's TCP store would listen on every
interface), and only tensors cross between them, so nothing received is unpickled.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 logs and writes checkpoints)."""
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params: list[Tensor]) -> None:
        """Replace every gradient by its mean over the processes. A parameter with a gradient on some
        process counts zero on the others; one with a gradient on none keeps none, so that AdamW
        skips it (no weight decay, no momentum step) as it would in one process."""
        if self.size == 1:
            return
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8)
        dist.all_reduce(present, op=dist.ReduceOp.MAX)
        used = [p for p, has in zip(params, present.tolist()) if has]
        if not used:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in used]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for p, g in zip(used, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each logged value over the processes (every process passes the same keys)."""
        if self.size == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.size for k, v in zip(keys, t)}

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on at least one (a shared decision to stop)."""
        if self.size == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, t: Tensor) -> list[Tensor]:
        """Every process's tensor `t` (the same shape and dtype on each), in rank order, on every
        process (random-generator states, for example)."""
        if self.size == 1:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(out, t.contiguous())
        return out


def loopback_interface() -> str:
    """The name of the loopback network interface, for gloo (GLOO_SOCKET_IFNAME)."""
    names = [name for _, name in socket.if_nameindex()]
    for name in ("lo", "lo0"):
        if name in names:
            return name
    raise RuntimeError(f"no loopback network interface among {names}; --processes needs one")


def run_processes(size: int, fn: Callable[[World], None]) -> None:
    """Run fn(World(rank, size)) in `size` processes joined by a gloo group on the loopback interface.

    fn must be picklable (a module-level function or a functools.partial of one)."""
    if size < 1:
        raise ValueError(f"the number of processes must be at least 1, not {size}")
    if size == 1:
        fn(World())
        return
    import torch.multiprocessing as mp
    interface = loopback_interface()
    with tempfile.TemporaryDirectory(prefix="clickpose-train-") as meeting:   # 0700: this user only
        mp.start_processes(_entry, args=(size, os.path.join(meeting, "store"), interface, fn), nprocs=size,
                           start_method="spawn")


def _entry(rank: int, size: int, store_path: str, interface: str, fn: Callable[[World], None]) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = interface
    store = dist.FileStore(store_path, size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=size)
    fn(World(rank, size))
    # Rank 0 finishes later (it writes the last files). A process that tears its group down, or
    # exits and closes its sockets, while a peer still holds the group can abort gloo in that peer
    # ("terminate called without an active exception"): wait for all before and after teardown.
    dist.barrier()
    dist.destroy_process_group()
    store.add("torn_down", 1)
    deadline = time.monotonic() + 60
    while int(store.add("torn_down", 0)) < size and time.monotonic() < deadline:
        time.sleep(0.01)
    # Even then, gloo's worker threads can still hold tensors that the interpreter's finalisation
    # frees without the GIL, which aborts the process (SIGABRT) after its work has succeeded. Nothing
    # is left to finalise here (checkpoints and logs are closed), so leave without finalising.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)
