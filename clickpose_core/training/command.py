"""`clickpose train`: train (or fine-tune) Click-Pose on a COCO-format keypoint dataset.

    clickpose train --images DIR --annotations FILE --out RUN_DIR --preset small --steps 6000
    clickpose train --resume RUN_DIR/last.pth                         # continue exactly
    clickpose train --resume RUN_DIR/last.pth --export weights.pth     # weights only, float32
    clickpose train --resume RUN_DIR/last.pth --export weights.pth --average-since 24000
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from dataclasses import asdict, dataclass

import torch

from ..commands import PRECISION_CHOICES
from ..checkpoint import build_from_checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from ..config import ClickPoseConfig
from ..model.clickpose import build_model
from .averaging import average_weights, run_snapshots
from .data import CocoKeypoints
from .distributed import World, run_processes
from .engine import TrainConfig, Trainer, check_one_step_fits
from .growth import deepen_pose_decoder

PRESETS = {"r50": ClickPoseConfig.r50, "medium": ClickPoseConfig.medium, "small": ClickPoseConfig.small,
           "tiny": ClickPoseConfig.tiny}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--images", help="folder with the images named in the annotation file")
    parser.add_argument("--annotations", help="COCO keypoint annotation JSON")
    parser.add_argument("--out", help="run folder: last.pth, step_*.pth, final.pth, log.jsonl")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model size (default small)")
    parser.add_argument("--init", help="start from these weights (fine-tuning); their config is used")
    parser.add_argument("--add-pose-layers", type=int, default=0, metavar="N",
                        help="with --init: append N pose layers that start as an identity step "
                             "(training/growth.py), so a trained network gets a deeper decoder")
    parser.add_argument("--min-size", type=int, default=None,
                        help="new run: the network's input short side (default: the preset's or --init's); "
                             "training scales images to 0.6-1x of it")
    parser.add_argument("--max-size", type=int, default=None,
                        help="new run: the network's input long-side limit (default: the preset's or --init's)")
    parser.add_argument("--resume", help="continue a run from its last.pth (same data, settings and state)")
    parser.add_argument("--export", help="with --resume: write the weights alone (float32) here and exit")
    parser.add_argument("--average-since", type=int, default=None, metavar="STEP",
                        help="with --export: write the mean of the run's step_*.pth snapshots from STEP on")
    parser.add_argument("--licence", help="licence text stored in the weights' meta (reported when they are used)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"total optimizer steps (default {d.steps}; with --resume: the run's own)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=None, help=f"default {d.lr} (with --resume: the run's own)")
    parser.add_argument("--lr-backbone", type=float, default=None,
                        help=f"default {d.lr_backbone} (with --resume: the run's own)")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--clip-max-norm", type=float, default=d.clip_max_norm, help="0 disables clipping")
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    parser.add_argument("--lr-drop-step", type=int, default=None,
                        help="lr x0.1 from this step on (with --resume: replaces the run's own)")
    parser.add_argument("--official-unpinned", action="store_true",
                        help="let clicked joints move in the feedback rounds, as the official code does")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument("--workers", type=int, default=d.workers, help="data loader processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (per process)")
    parser.add_argument("--processes", type=int, default=None,
                        help="data-parallel training processes on this machine, each with --batch-size images "
                             f"of every step (default {d.processes}; with --resume: the run's own, or a new count)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="float32",
                        help="bfloat16: forward and losses under bf16 autocast, where the CPU has native bf16 "
                             "(avx512_bf16/AMX) or on CUDA (else float32 with a warning); default float32")
    parser.add_argument("--heatmap-weight", type=float, default=d.heatmap_weight,
                        help="weight of the dense joint/centre heatmap objective for training from scratch "
                             "(docs/training.md); 0 (default) is the official recipe")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop after this many minutes of training in this session (saved; --resume continues)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(steps=args.steps or TrainConfig.steps, batch_size=args.batch_size,
                       lr=args.lr or TrainConfig.lr, lr_backbone=args.lr_backbone or TrainConfig.lr_backbone,
                       weight_decay=args.weight_decay, clip_max_norm=args.clip_max_norm,
                       warmup_steps=args.warmup_steps, lr_drop_step=args.lr_drop_step,
                       pin_clicks=not args.official_unpinned, seed=args.seed,
                       checkpoint_every=args.checkpoint_every, log_every=args.log_every, workers=args.workers,
                       precision=args.precision, heatmap_weight=args.heatmap_weight,
                       processes=args.processes or TrainConfig.processes)


def export(resume: str, path: str, licence: str | None = None, average_since: int | None = None) -> int:
    """Weights + config + meta of a training checkpoint, float32, without the optimizer; with
    `average_since`, the mean of the run's snapshots from that step on (`averaging.py`)."""
    model, ckpt = build_from_checkpoint(resume, dtype=torch.float32)
    meta = {**ckpt.meta, **({"licence": licence} if licence else {})}
    what = f"step {ckpt.meta.get('step')}"
    if average_since is not None:
        snapshots = run_snapshots(os.path.dirname(os.path.abspath(resume)), since=average_since)
        if not snapshots:
            raise SystemExit(f"no step_*.pth snapshot from step {average_since} on beside {resume}")
        try:
            model.load_state_dict(average_weights([p for _, p in snapshots]))
        except (ValueError, RuntimeError) as e:
            raise SystemExit(f"cannot average the snapshots: {e}") from None
        meta["averaged_steps"] = [step for step, _ in snapshots]
        what = f"mean of {len(snapshots)} snapshots, steps {snapshots[0][0]}-{snapshots[-1][0]}"
    save_checkpoint(path, model, meta)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB, {what})")
    return 0


@dataclass(frozen=True)
class TrainJob:
    """Everything one training process needs (picklable: it is sent to each process)."""
    model_config: ClickPoseConfig
    train_config: TrainConfig
    images: str
    annotations: str
    out: str
    device: str
    resume: str | None
    init: str | None
    threads: int | None
    progress: bool
    minutes: float | None
    meta: dict


def train_process(job: TrainJob, world: World) -> None:
    """Build the model, data and trainer of one process and train (rank 0 reports)."""
    if job.threads:
        torch.set_num_threads(job.threads)
    tcfg = job.train_config
    torch.manual_seed(tcfg.seed)
    model = build_model(job.model_config)
    if job.init:
        load_checkpoint(model, job.init)
    dataset = CocoKeypoints(job.images, job.annotations, job.model_config, train=True, seed=tcfg.seed)
    trainer = Trainer(model, dataset, tcfg, job.out, device=job.device, meta=job.meta, world=world)
    if job.resume:
        trainer.resume(job.resume)
        if world.is_main:
            print(f"resumed {job.resume} at step {trainer.step} of {tcfg.steps}")
    trainer.fit(progress=job.progress, minutes=job.minutes)
    if not world.is_main:
        return
    if trainer.step < tcfg.steps:
        print(f"stopped after {job.minutes} min at step {trainer.step} of {tcfg.steps}; "
              f"continue with --resume {os.path.join(job.out, 'last.pth')}")
    else:
        print(f"done: {trainer.step} steps in {trainer.elapsed / 60:.1f} min; "
              f"weights in {os.path.join(job.out, 'final.pth')}")


def _deepened_init(init: str, extra_layers: int, out: str) -> tuple[str, ClickPoseConfig]:
    """Write `init` with `extra_layers` more pose layers into the run folder (every training
    process loads its start from there); returns that file and its config."""
    model, ckpt = build_from_checkpoint(init, dtype=torch.float32)
    deeper = deepen_pose_decoder(model, extra_layers)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "init_deepened.pth")
    save_checkpoint(path, deeper, {**ckpt.meta, "added_pose_layers": extra_layers})
    print(f"{init}: {model.config.num_pose_layers} -> {deeper.config.num_pose_layers} pose layers, "
          f"written to {path}")
    return path, deeper.config


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.add_pose_layers < 0:
        raise SystemExit(f"--add-pose-layers must be 0 or more layers, not {args.add_pose_layers}")
    if args.resume and (args.min_size or args.max_size or args.add_pose_layers):
        raise SystemExit("--min-size, --max-size and --add-pose-layers shape a new run's network "
                         "(a resumed run keeps its own)")
    if args.add_pose_layers and not args.init:
        raise SystemExit("--add-pose-layers deepens the weights of --init: name them")
    if any(v is not None and v < 32 for v in (args.min_size, args.max_size)):
        raise SystemExit(f"--min-size and --max-size must be at least 32 pixels, not {args.min_size} / {args.max_size}")
    if args.export:
        if not args.resume:
            raise SystemExit("--export needs --resume CHECKPOINT")
        return export(args.resume, args.export, args.licence, args.average_since)
    if args.average_since is not None:
        raise SystemExit("--average-since goes with --export (it writes averaged weights, it does not train)")

    if args.minutes is not None and not args.minutes > 0:
        raise SystemExit(f"--minutes must be a positive number of minutes, not {args.minutes}")
    if args.resume:
        # A resumed run keeps its data, model and settings; only the schedule (--steps, --lr-drop-step,
        # --lr, --lr-backbone) and the number of processes may change.
        ckpt = read_checkpoint(args.resume)
        meta = ckpt.meta
        cfg = ckpt.model_config()
        saved = meta["train_config"]
        changes = {"steps": args.steps, "lr_drop_step": args.lr_drop_step, "lr": args.lr,
                   "lr_backbone": args.lr_backbone, "processes": args.processes}
        tcfg = TrainConfig.from_dict({**saved, **{k: v for k, v in changes.items() if v is not None}})
        # The same data may live elsewhere on this machine (a fresh checkout regenerates it).
        images, annotations = args.images or meta["images"], args.annotations or meta["annotations"]
        meta = {**meta, "images": os.path.abspath(images), "annotations": os.path.abspath(annotations)}
        out = args.out or os.path.dirname(os.path.abspath(args.resume))
    else:
        if not (args.images and args.annotations and args.out):
            raise SystemExit("--images, --annotations and --out are required (or --resume)")
        images, annotations, out = args.images, args.annotations, args.out
        if os.path.exists(os.path.join(out, "last.pth")):
            raise SystemExit(f"{out} already holds a run; use --resume {os.path.join(out, 'last.pth')}")
        tcfg = _train_config(args)
        cfg = read_checkpoint(args.init).model_config() if args.init else PRESETS[args.preset]()
        cfg = cfg.replace(min_size=args.min_size or cfg.min_size, max_size=args.max_size or cfg.max_size)
        if cfg.min_size > cfg.max_size:
            raise SystemExit(f"the input short side {cfg.min_size} exceeds the long-side limit {cfg.max_size}: "
                             "raise --max-size too")
        meta = {"images": os.path.abspath(images), "annotations": os.path.abspath(annotations),
                "preset": None if args.init else args.preset, "init": args.init, "host": platform.node(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "licence": args.licence}

    if not (os.path.isdir(images) and os.path.isfile(annotations)):
        raise SystemExit(f"training data not found: images {images!r}, annotations {annotations!r}"
                         + (" (a resumed run may name its data's new place with --images/--annotations)"
                            if args.resume else ""))
    # Checked here, not only in each training process, so that a bad dataset is one clear message
    # rather than a traceback from every child.
    try:
        images_in_data = len(CocoKeypoints(images, annotations, cfg, train=True, seed=tcfg.seed))
    except (ValueError, KeyError, OSError) as e:
        raise SystemExit(f"training data {annotations!r}: {e}") from None
    try:
        check_one_step_fits(images_in_data, tcfg.batch_size, tcfg.processes)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    init = None if args.resume else args.init
    if args.add_pose_layers:
        init, deeper = _deepened_init(args.init, args.add_pose_layers, out)
        cfg = deeper.replace(min_size=cfg.min_size, max_size=cfg.max_size)
        meta["added_pose_layers"] = args.add_pose_layers
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "train_config.json"), "w") as f:
        json.dump({"model": cfg.to_dict(), "train": asdict(tcfg), "images": images, "annotations": annotations},
                  f, indent=1)
    job = TrainJob(cfg, tcfg, images, annotations, out, args.device, args.resume,
                   init, args.threads, not args.no_progress, args.minutes,
                   {k: meta[k] for k in ("images", "annotations", "preset", "init", "added_pose_layers", "host",
                                         "started", "licence") if meta.get(k) is not None})
    run_processes(tcfg.processes, functools.partial(train_process, job))
    return 0
