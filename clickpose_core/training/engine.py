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
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import FORMAT, save_checkpoint
from ..model.clickpose import ClickPose
from ..model.kernels import Kernels
from .data import CocoKeypoints, collate
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

    def lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        drop = 0.1 if self.lr_drop_step is not None and step >= self.lr_drop_step else 1.0
        return warm * drop

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def param_groups(model: ClickPose, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The official split: backbone parameters get lr_backbone, the rest lr."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not n.startswith("backbone.")], "lr": cfg.lr, "base_lr": cfg.lr},
            {"params": [p for n, p in named if n.startswith("backbone.")], "lr": cfg.lr_backbone,
             "base_lr": cfg.lr_backbone}]


def compute_losses(model: ClickPose, criterion: SetCriterion, images: Tensor, masks: Tensor,
                   targets: list[dict[str, Tensor]], generator: torch.Generator, pin_clicks: bool = True
                   ) -> dict[str, Tensor]:
    """All loss terms of one batch (unweighted, by name; `criterion.total` weights them)."""
    cfg = model.config
    mem = model.encode(images, masks)
    dn = dn_targets = None
    if cfg.dn_number > 0:
        dn, dn_targets = make_denoising_queries(model, targets, DenoisingSettings.from_config(cfg), generator)
    outputs = model.decode(mem, dn=dn, with_aux=True)
    feedback = simulate_feedback(model, mem, outputs, targets, criterion.matcher, generator, pin=pin_clicks)
    return criterion(outputs, targets, cfg.num_box_decoder_layers, dn_targets, feedback)


def summarise(losses: dict[str, Tensor], criterion: SetCriterion, last_layer: int) -> dict[str, float]:
    """A compact log line: the weighted total, weighted sums by part, unweighted final-layer terms."""
    w = criterion.weights.of
    out = {"loss": float(sum(w(n) * v.item() for n, v in losses.items()))}
    parts = {"main": lambda n: n.startswith("loss_") and "/d" in n, "feedback": lambda n: "/r" in n,
             "enc": lambda n: n.endswith("/enc"), "dn": lambda n: n.startswith("dn_")}
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
    `log.jsonl` (one line of losses per log_every steps).
    """

    def __init__(self, model: ClickPose, dataset: CocoKeypoints, cfg: TrainConfig, run_dir: str,
                 device: str | torch.device = "cpu", meta: dict[str, Any] | None = None):
        self.model = model.to(device)
        self.dataset, self.cfg, self.run_dir, self.device = dataset, cfg, run_dir, torch.device(device)
        self.meta = dict(meta or {})
        self.criterion = SetCriterion(HungarianMatcher(model.config.sigmas), model.config.num_classes, LossWeights())
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.elapsed = 0.0            # training seconds over all sessions of this run
        self.autocast = Kernels.select(self.device, cfg.precision).precision == "bfloat16"
        if len(dataset) < cfg.batch_size:
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than one batch of {cfg.batch_size}")

    # ---- one step --------------------------------------------------------------------------
    def train_step(self, images: Tensor, masks: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, float]:
        self.model.train()
        factor = self.cfg.lr_factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        dev = self.device
        targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            losses = compute_losses(self.model, self.criterion, images.to(dev), masks.to(dev), targets,
                                    self.generator, self.cfg.pin_clicks)
        total = self.criterion.total(losses)
        if not math.isfinite(total.item()):
            raise FloatingPointError(f"loss is {total.item()} at step {self.step}: "
                                     + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_max_norm) \
            if self.cfg.clip_max_norm > 0 else torch.tensor(0.0)
        self.optimizer.step()
        self.step += 1
        out = summarise(losses, self.criterion, self.model.config.dec_layers - 1)
        out["grad_norm"] = float(grad_norm)
        out["lr"] = self.cfg.lr * factor
        return out

    # ---- data order ------------------------------------------------------------------------
    def batches(self) -> Iterator[tuple[Tensor, Tensor, list[dict[str, Tensor]]]]:
        """Batches from the current step on; epoch e uses a permutation seeded by (seed, e)."""
        per_epoch = len(self.dataset) // self.cfg.batch_size
        while True:
            epoch, offset = divmod(self.step, per_epoch)
            order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(
                self.cfg.seed * 100_003 + epoch)).tolist()
            chunks = [order[i * self.cfg.batch_size:(i + 1) * self.cfg.batch_size]
                      for i in range(offset, per_epoch)]
            self.dataset.set_epoch(epoch)
            loader = DataLoader(self.dataset, batch_sampler=chunks, collate_fn=collate,
                                num_workers=self.cfg.workers)
            yield from loader

    # ---- the loop --------------------------------------------------------------------------
    def fit(self, progress: bool = True) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        log_path = os.path.join(self.run_dir, "log.jsonl")
        window: list[dict[str, float]] = []
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not progress, desc="train", dynamic_ncols=True)
        started = time.perf_counter() - self.elapsed
        _drop_log_after(log_path, self.step)
        with open(log_path, "a") as log:
            for images, masks, targets in self.batches():
                if self.step >= self.cfg.steps:
                    break
                window.append(self.train_step(images, masks, targets))
                self.elapsed = time.perf_counter() - started
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    line = {k: sum(d[k] for d in window) / len(window) for k in window[0]}
                    line.update(step=self.step, elapsed_s=round(self.elapsed, 1))
                    log.write(json.dumps(line) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{line['loss']:.2f}", kpt=f"{line.get('loss_keypoints', 0):.3f}")
                    window = []
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                    self.save(os.path.join(self.run_dir, "last.pth"))
                    self.save(os.path.join(self.run_dir, f"step_{self.step:06d}.pth"), optimizer=False)
        bar.close()
        save_checkpoint(os.path.join(self.run_dir, "final.pth"), self.model, self.weights_meta())

    # ---- checkpoints -----------------------------------------------------------------------
    def weights_meta(self) -> dict[str, Any]:
        return {**self.meta, "step": self.step, "train_seconds": round(self.elapsed, 1),
                "train_config": asdict(self.cfg)}

    def save(self, path: str, optimizer: bool = True) -> None:
        """A `save_checkpoint`-format file; with optimizer=True also the state `resume` needs."""
        if not optimizer:
            save_checkpoint(path, self.model, self.weights_meta())
            return
        payload = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "config": self.model.config.to_dict(),
            "meta": {"format": FORMAT, "torch": str(torch.__version__), **self.weights_meta()},
            "optimizer": self.optimizer.state_dict(),
            "trainer": {"step": self.step, "elapsed": self.elapsed, "generator": self.generator.get_state(),
                        "torch_rng": torch.get_rng_state()},
        }
        tmp = path + ".tmp"
        torch.save(payload, tmp)
        os.replace(tmp, path)    # a crash mid-write never leaves a broken last.pth

    def resume(self, path: str) -> None:
        """Continue from a `save(optimizer=True)` file: weights, optimizer, step and random state."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "trainer" not in state or "optimizer" not in state:
            raise ValueError(f"{path} holds weights only; resume needs a training checkpoint (last.pth)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        # The run's TrainConfig decides the learning rates (a resume may change them on purpose).
        for group, base in zip(self.optimizer.param_groups, (self.cfg.lr, self.cfg.lr_backbone)):
            group["base_lr"] = base
        t = state["trainer"]
        self.step, self.elapsed = int(t["step"]), float(t["elapsed"])
        self.generator.set_state(t["generator"])
        torch.set_rng_state(t["torch_rng"])


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
