"""The training loop: one step = encode, decode with denoising queries, simulated feedback rounds,
matched losses, AdamW with gradient clipping. Checkpoints hold everything needed to continue
exactly (weights, optimizer, step, random state)."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import FORMAT, save_checkpoint
from ..model.clickpose import ClickPose
from ..model.kernels import Kernels
from .data import CocoKeypoints, collate
from .dense import DenseKeypointHead, dense_loss
from .distributed import World
from .denoising import DenoisingSettings, make_denoising_queries
from .feedback import simulate_feedback
from .losses import LossWeights, SetCriterion
from .matcher import HungarianMatcher


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults are the official ones (AdamW, lr 1e-4, backbone 1e-5, weight
    decay 1e-4, gradient norm clipped to 0.1, lr x0.1 late in training, batch 2)."""
    steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    warmup_steps: int = 0            # linear ramp from 0; the official schedule has none
    lr_drop_step: int | None = None  # step at which lr is multiplied by 0.1 (None: never)
    pin_clicks: bool = True          # hold clicked joints in the feedback rounds (see feedback.py)
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    workers: int = 0
    precision: str = "float32"       # "bfloat16": forward and loss under bf16 autocast (where native)
    heatmap_weight: float = 0.0      # > 0: add the dense joint/centre heatmap objective (dense.py)
    processes: int = 1               # data-parallel processes; each takes batch_size images of a step

    def lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        drop = 0.1 if self.lr_drop_step is not None and step >= self.lr_drop_step else 1.0
        return warm * drop

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def param_groups(model: ClickPose, cfg: TrainConfig, extra: nn.Module | None = None) -> list[dict[str, Any]]:
    """The official split: backbone parameters get lr_backbone, the rest lr; `extra` (a training-only
    head) is a third group at lr."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not n.startswith("backbone.")], "lr": cfg.lr, "base_lr": cfg.lr},
              {"params": [p for n, p in named if n.startswith("backbone.")], "lr": cfg.lr_backbone,
               "base_lr": cfg.lr_backbone}]
    if extra is not None:
        groups.append({"params": list(extra.parameters()), "lr": cfg.lr, "base_lr": cfg.lr})
    return groups


def compute_losses(model: ClickPose, criterion: SetCriterion, images: Tensor, masks: Tensor,
                   targets: list[dict[str, Tensor]], generator: torch.Generator, pin_clicks: bool = True,
                   dense_head: DenseKeypointHead | None = None) -> dict[str, Tensor]:
    """All loss terms of one batch (unweighted, by name; `criterion.total` weights them)."""
    cfg = model.config
    mem = model.encode(images, masks)
    dn = dn_targets = None
    if cfg.dn_number > 0:
        dn, dn_targets = make_denoising_queries(model, targets, DenoisingSettings.from_config(cfg), generator)
    outputs = model.decode(mem, dn=dn, with_aux=True)
    feedback = simulate_feedback(model, mem, outputs, targets, criterion.matcher, generator, pin=pin_clicks)
    losses = criterion(outputs, targets, cfg.num_box_decoder_layers, dn_targets, feedback)
    if dense_head is not None:
        losses["loss_heatmap/hm"] = dense_loss(dense_head, mem, targets)
    return losses


def summarise(losses: dict[str, Tensor], criterion: SetCriterion, last_layer: int) -> dict[str, float]:
    """A compact log line: the weighted total, weighted sums by part, unweighted final-layer terms."""
    w = criterion.weights.of
    out = {"loss": float(sum(w(n) * v.item() for n, v in losses.items()))}
    parts = {"main": lambda n: n.startswith("loss_") and "/d" in n, "feedback": lambda n: "/r" in n,
             "enc": lambda n: n.endswith("/enc"), "dn": lambda n: n.startswith("dn_")}
    if any(n.endswith("/hm") for n in losses):
        parts["heatmap"] = lambda n: n.endswith("/hm")
    for part, pick in parts.items():
        out[part] = float(sum(w(n) * v.item() for n, v in losses.items() if pick(n)))
    last_fb = max((int(n.split("/r")[1]) for n in losses if "/r" in n), default=None)
    for name, v in losses.items():
        base, where = name.split("/")
        if where == f"d{last_layer}":
            out[base] = v.item()
        elif last_fb is not None and where == f"r{last_fb}":
            out["fb_" + base] = v.item()
    return out


class Trainer:
    """Owns the model, optimizer, data order and random state of one run directory.

    run_dir gets `last.pth` (resumable), `step_<n>.pth` snapshots, `final.pth` (weights only) and
    `log.jsonl` (one line of losses per log_every steps). With several processes (`world`), each one
    has a Trainer; they train on disjoint parts of every step's batch, average their gradients, and
    only rank 0 writes files.
    """

    def __init__(self, model: ClickPose, dataset: CocoKeypoints, cfg: TrainConfig, run_dir: str,
                 device: str | torch.device = "cpu", meta: dict[str, Any] | None = None,
                 world: World = World()):
        if world.size != cfg.processes:
            raise ValueError(f"the run is configured for {cfg.processes} processes but {world.size} are running")
        self.world = world
        self.model = model.to(device)
        self.dataset, self.cfg, self.run_dir, self.device = dataset, cfg, run_dir, torch.device(device)
        self.meta = dict(meta or {})
        self.criterion = SetCriterion(HungarianMatcher(model.config.sigmas), model.config.num_classes,
                                      LossWeights(heatmap=cfg.heatmap_weight))
        self.dense_head = DenseKeypointHead(model.config.hidden_dim, model.config.num_keypoints).to(device) \
            if cfg.heatmap_weight > 0 else None
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg, self.dense_head), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        # Rank 0 draws what a one-process run draws; the others their own streams.
        self.generator = torch.Generator().manual_seed(cfg.seed + 7919 * world.rank)
        self.step = 0
        self.elapsed = 0.0            # training seconds over all sessions of this run
        # Where the data order stands: the epoch, and how many of its images the steps so far
        # took. Kept in images, not steps, so that a resume with another process count goes on
        # from the same image.
        self.epoch, self.epoch_images = 0, 0
        self.autocast = Kernels.select(self.device, cfg.precision).precision == "bfloat16"
        check_one_step_fits(len(dataset), cfg.batch_size, world.size)

    # ---- one step --------------------------------------------------------------------------
    def train_step(self, images: Tensor, masks: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, float]:
        self.model.train()
        if self.dense_head is not None:
            self.dense_head.train()
        factor = self.cfg.lr_factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        dev = self.device
        targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            losses = compute_losses(self.model, self.criterion, images.to(dev), masks.to(dev), targets,
                                    self.generator, self.cfg.pin_clicks, self.dense_head)
        total = self.criterion.total(losses)
        # Every process stops together; one that raised alone would leave the others waiting in the
        # gradient all-reduce.
        if self.world.any(not math.isfinite(total.item())):
            raise FloatingPointError(f"the loss is not finite at step {self.step} (in this process: "
                                     f"{total.item()}: "
                                     + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()) + ")")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.world.average_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_max_norm) \
            if self.cfg.clip_max_norm > 0 else torch.tensor(0.0)
        self.optimizer.step()
        self.step += 1
        out = self.world.mean(summarise(losses, self.criterion, self.model.config.dec_layers - 1))
        out["grad_norm"] = float(grad_norm)
        out["lr"] = self.cfg.lr * factor
        return out

    # ---- data order ------------------------------------------------------------------------
    def batches(self) -> Iterator[tuple[Tensor, Tensor, list[dict[str, Tensor]]]]:
        """Batches from the data cursor on; epoch e uses a permutation seeded by (seed, e). A step
        takes batch_size x processes consecutive images of it (`fit` moves the cursor), this
        process the rank-th batch_size of them; an epoch's last images that fill no step are left."""
        bs, step_size = self.cfg.batch_size, self.cfg.batch_size * self.world.size
        while True:
            self._next_epoch_if_no_step_fits()   # after a resume with more processes
            epoch, start = self.epoch, self.epoch_images
            order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(
                self.cfg.seed * 100_003 + epoch)).tolist()
            first = start + self.world.rank * bs
            steps = (len(self.dataset) - start) // step_size
            chunks = [order[first + i * step_size:first + i * step_size + bs] for i in range(steps)]
            self.dataset.set_epoch(epoch)
            loader = DataLoader(self.dataset, batch_sampler=chunks, collate_fn=collate,
                                num_workers=self.cfg.workers)
            yield from loader

    def _took_a_step(self) -> None:
        self.epoch_images += self.cfg.batch_size * self.world.size
        self._next_epoch_if_no_step_fits()

    def _next_epoch_if_no_step_fits(self) -> None:
        if self.epoch_images + self.cfg.batch_size * self.world.size > len(self.dataset):
            self.epoch, self.epoch_images = self.epoch + 1, 0

    # ---- the loop --------------------------------------------------------------------------
    def fit(self, progress: bool = True, minutes: float | None = None) -> None:
        """Train to cfg.steps; with `minutes`, stop earlier once this session has trained that long
        (saving last.pth, so `resume` continues from there)."""
        deadline = time.perf_counter() + 60 * minutes if minutes is not None else math.inf
        main = self.world.is_main
        log_path = os.path.join(self.run_dir, "log.jsonl")
        window: list[dict[str, float]] = []
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not (progress and main), desc="train",
                   dynamic_ncols=True)
        started = time.perf_counter() - self.elapsed
        if main:
            os.makedirs(self.run_dir, exist_ok=True)
            _drop_log_after(log_path, self.step)
        with open(log_path if main else os.devnull, "a") as log:
            for images, masks, targets in self.batches():
                if self.step >= self.cfg.steps:
                    break
                if self.world.any(time.perf_counter() >= deadline):
                    if window:   # the steps since the last log line
                        log.write(json.dumps(_log_line(window, self.step, self.elapsed)) + "\n")
                    self.save(os.path.join(self.run_dir, "last.pth"))
                    self.save(os.path.join(self.run_dir, f"step_{self.step:06d}.pth"), optimizer=False)
                    bar.close()
                    return
                window.append(self.train_step(images, masks, targets))
                self._took_a_step()
                self.elapsed = time.perf_counter() - started
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    line = _log_line(window, self.step, self.elapsed)
                    log.write(json.dumps(line) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{line['loss']:.2f}", kpt=f"{line.get('loss_keypoints', 0):.3f}")
                    window = []
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                    self.save(os.path.join(self.run_dir, "last.pth"))
                    self.save(os.path.join(self.run_dir, f"step_{self.step:06d}.pth"), optimizer=False)
        bar.close()
        if main:
            save_checkpoint(os.path.join(self.run_dir, "final.pth"), self.model, self.weights_meta())

    # ---- checkpoints -----------------------------------------------------------------------
    def weights_meta(self) -> dict[str, Any]:
        return {**self.meta, "step": self.step, "train_seconds": round(self.elapsed, 1),
                "train_config": asdict(self.cfg)}

    def save(self, path: str, optimizer: bool = True) -> None:
        """A `save_checkpoint`-format file; with optimizer=True also the state `resume` needs (then
        every process must call it: the random states of all of them are gathered)."""
        if not optimizer:
            if self.world.is_main:
                save_checkpoint(path, self.model, self.weights_meta())
            return
        generators = self.world.gather(self.generator.get_state())
        torch_rngs = self.world.gather(torch.get_rng_state())
        if not self.world.is_main:
            return
        payload = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "config": self.model.config.to_dict(),
            "meta": {"format": FORMAT, "torch": str(torch.__version__), **self.weights_meta()},
            "optimizer": self.optimizer.state_dict(),
            "trainer": {"step": self.step, "elapsed": self.elapsed, "epoch": self.epoch,
                        "epoch_images": self.epoch_images, "generator": generators[0],
                        "torch_rng": torch_rngs[0], "generators": generators, "torch_rngs": torch_rngs},
        }
        if self.dense_head is not None:
            payload["dense_head"] = self.dense_head.state_dict()
        tmp = path + ".tmp"
        torch.save(payload, tmp)
        os.replace(tmp, path)    # a crash mid-write never leaves a broken last.pth

    def resume(self, path: str) -> None:
        """Continue from a `save(optimizer=True)` file: weights, optimizer, step and random state."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "trainer" not in state or "optimizer" not in state:
            raise ValueError(f"{path} holds weights only; resume needs a training checkpoint (last.pth)")
        self.model.load_state_dict(state["model"])
        if self.dense_head is not None:
            if "dense_head" not in state:
                raise ValueError(f"{path} was trained without the heatmap objective; it cannot be resumed with it")
            self.dense_head.load_state_dict(state["dense_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        # The run's TrainConfig decides the learning rates (a resume may change them on purpose);
        # the heatmap head's group, the third, follows lr.
        for group, base in zip(self.optimizer.param_groups, (self.cfg.lr, self.cfg.lr_backbone, self.cfg.lr)):
            group["base_lr"] = base
        t = state["trainer"]
        generators, torch_rngs = t.get("generators", [t["generator"]]), t.get("torch_rngs", [t["torch_rng"]])
        self.step, self.elapsed = int(t["step"]), float(t["elapsed"])
        if "epoch_images" in t:
            self.epoch, self.epoch_images = int(t["epoch"]), int(t["epoch_images"])
        else:   # saved before the cursor was kept: the step count and the saved step size say it
            saved = state["meta"].get("train_config", {})
            step_size = int(saved.get("batch_size", self.cfg.batch_size)) * int(saved.get("processes", 1))
            self.epoch, offset = divmod(self.step, len(self.dataset) // step_size)
            self.epoch_images = offset * step_size
        # With as many processes as saved the run continues exactly. With more, the new ranks start
        # streams of their own (seeded by rank and step); with fewer, the extra streams end. Either
        # way each step's images are then split differently: a deliberate change, like a new lr.
        if self.world.rank < len(generators):
            self.generator.set_state(generators[self.world.rank])
            torch.set_rng_state(torch_rngs[self.world.rank])
        else:
            self.generator.manual_seed(self.cfg.seed + 7919 * self.world.rank + 104_729 * self.step)


def check_one_step_fits(images: int, batch_size: int, processes: int) -> None:
    """ValueError unless the dataset holds at least one step: batch_size images on each process."""
    if images < batch_size * processes:
        raise ValueError(f"the dataset has {images} images, fewer than one step's "
                         f"--batch-size {batch_size} x --processes {processes}")


def _log_line(window: list[dict[str, float]], step: int, elapsed: float) -> dict[str, float]:
    """The means of a window of steps' logged values, with the step reached and the time so far."""
    line = {k: sum(d[k] for d in window) / len(window) for k in window[0]}
    line.update(step=step, elapsed_s=round(elapsed, 1))
    return line


def _drop_log_after(log_path: str, step: int) -> None:
    """Forget log lines past `step`: a run interrupted after its last checkpoint logged steps that
    the resumed run computes again, and the log must hold each step once."""
    if not os.path.exists(log_path):
        return
    with open(log_path) as f:
        lines = f.readlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        tmp = log_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, log_path)
