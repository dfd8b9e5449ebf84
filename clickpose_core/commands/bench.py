"""`clickpose bench`: today's code path, the new float32 kernels and bfloat16 side by side, in one process.

For one input of the given size and each thread count, every path runs the full forward
(encode + decode) and one feedback round (the official 20 rows, and one clicked person), the
paths interleaved run by run so that a busy machine slows them alike; medians are printed with
their ratios to today's path. "today" is the code before the kernel work: torch's `nn.Linear`
(MKL sgemm), an NCHW trunk, glibc's default allocator policy and the previous sampler
(`previous_sampler`); the rest of the network code is today's too, so rounds, which gained
mostly from the decoder's grouped self-attention, are compared against main's code in the README. One more forward per
path, timed by hooks, says where the time goes. With the parity fixture present, the largest
keypoint deviation of bfloat16 from float32 is printed in pixels of the parity input.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..config import ClickPoseConfig
from ..model import ClickPose, build_model
from ..model.deformable_attention import MSDeformAttn, deformable_sample_reference
from ..model.kernels import CastLinear, Kernels, OneDNNLinear
from .previous_sampler import previous_deformable_sample

PATHS = ("today", "float32", "bfloat16", "official")
STAGES = ("backbone", "encoder GEMMs", "encoder sampler", "encoder other", "decoder value tables",
          "decoder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="800x1216", help="input HxW after resizing (default: 800x1216)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of the full forward per path (median printed); "
                                                     "rounds run 4x as often")
    p.add_argument("--threads", type=_threads, default=[1, 2], help="comma-separated torch thread counts (default 1,2)")
    p.add_argument("--preset", choices=["r50", "small", "tiny"], default="r50")
    p.add_argument("--paths", type=_paths, default=["today", "float32", "bfloat16"],
                   help=f"comma-separated from {', '.join(PATHS)} (default today,float32,bfloat16; 'official' "
                        "is the official CPU algorithm, per-level grid_sample: slow)")
    p.add_argument("--fill", type=Path, default=None,
                   help="fill_weights.py of the parity fixture, for the official filled weights "
                        "(default: ../shared/reference/fill_weights.py when present, else random init)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")


def _threads(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return vals


def _paths(text: str) -> list[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in PATHS]
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"unknown path(s) {bad}; choose from {', '.join(PATHS)}")
    return vals


@dataclass
class CodePath:
    """One code path under test: its model copy and its kernels."""
    name: str
    model: ClickPose
    kernels: Kernels
    official_round: bool = False
    times: dict[str, list[float]] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    h, w = _size(args.size)
    cfg = getattr(ClickPoseConfig, args.preset)()
    base = build_model(cfg).eval()
    weights = _fill(base, args.fill)
    paths = [p for p in (_build(name, base) for name in args.paths) if p is not None]
    g = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, h, w, generator=g)
    masks = torch.zeros(1, h, w, dtype=torch.bool)
    print(f"clickpose bench: {args.preset} ({weights}), input {h}x{w}, medians of {args.runs} interleaved runs "
          f"(rounds: {4 * args.runs}); ratios are to the first path ({paths[0].name})")
    figures: dict[str, Any] = {"input": [h, w], "preset": args.preset, "weights": weights, "threads": {}}
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            figures["threads"][threads] = _measure(paths, images, masks, cfg, args.runs)
            _report(threads, figures["threads"][threads], [p.name for p in paths])
        figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of the process: {figures['peak_rss_mb']:.0f} MiB")
        deviation = _bf16_deviation(args.fill, {p.name: p for p in paths})
        if deviation:
            figures["bfloat16_deviation"] = deviation
            print("bfloat16 against float32 on the parity input (320x480, filled weights): largest keypoint "
                  f"deviation {deviation['round_px']:.2f} px after one feedback round from the same state; "
                  f"{deviation['full_px']:.2f} px in the full forward over the {deviation['matched']} of 20 "
                  "persons both precisions kept")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"clickpose bench: --size must look like 800x1216, got {text!r}") from None
    return h, w


def _build(name: str, base: ClickPose) -> CodePath | None:
    """A private copy of `base` set up for path `name` (None: bfloat16 is not native here)."""
    model = copy.deepcopy(base)
    if name in ("today", "official"):
        sampler = previous_deformable_sample if name == "today" else deformable_sample_reference
        for m in model.modules():
            if isinstance(m, MSDeformAttn):
                m.sampler = sampler
        return CodePath(name, model, Kernels(), official_round=name == "official")
    kernels = Kernels.select(torch.device("cpu"), name)
    if kernels.precision != name:
        print("(no bfloat16 column: this CPU has no native bf16, see the warning above)")
        return None
    return CodePath(name, kernels.apply(model), kernels)


def _measure(paths: list[CodePath], images: torch.Tensor, masks: torch.Tensor, cfg: ClickPoseConfig,
             runs: int) -> dict[str, dict[str, Any]]:
    """Interleaved timings of every path; returns {path: {measure: median seconds, ...}}."""
    state = {}
    for p in paths:                                         # warm-up, and each path's own inputs for a round
        p.kernels.activate()
        mem = p.model.encode(images, masks)
        out = p.model.decode(mem)
        top = out["pred_logits"][0].max(-1)[0].topk(cfg.num_select)[1]
        boxes = out["pred_boxes"][:, top]
        kpts = out["pred_keypoints"][:, top, :2 * cfg.num_keypoints].reshape(1, -1, cfg.num_keypoints, 2)
        state[p.name] = (mem, boxes, kpts)
        p.times = {"full": [], "round_20": [], "round_1": []}
    for _ in range(runs):
        for p in paths:
            p.kernels.activate()
            p.times["full"].append(_time(lambda: p.model.decode(p.model.encode(images, masks))))
    for _ in range(4 * runs):
        for p in paths:
            p.kernels.activate()
            mem, boxes, kpts = state[p.name]
            cached = mem if p.official_round else mem.for_refinement()
            round_ = _official_round if p.official_round else (lambda m, *a: m.refine(*a))
            p.times["round_20"].append(_time(lambda: round_(p.model, cached, boxes, kpts)))
            p.times["round_1"].append(_time(lambda: round_(p.model, cached, boxes[:, :1], kpts[:, :1])))
    result = {}
    for p in paths:
        p.kernels.activate()
        mem = state[p.name][0]
        result[p.name] = {k: statistics.median(w for w, _ in v) for k, v in p.times.items()}
        result[p.name].update({f"{k}_cpu": statistics.median(c for _, c in v) for k, v in p.times.items()})
        result[p.name]["cache_mib"] = mem.for_refinement().nbytes() / 2**20
        result[p.name]["stages"] = _stages(p.model, images, masks)
    return result


def _time(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call. On a shared machine the CPU time, summed over this
    process's threads, is the steadier of the two (others' jobs stretch the wall clock)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def _official_round(model: ClickPose, mem, boxes, kpts):
    """A round as the official code runs it: the pose layers re-project the memory every time."""
    layers = model.transformer.decoder.layers[model.config.num_box_decoder_layers:]
    values = [layer.cross_attn.project_values(mem.memory, mem.padding, mem.layout) for layer in layers]
    fresh = type(mem)(mem.memory, mem.padding, mem.layout, mem.valid_ratios, values)
    return model.refine(fresh, boxes, kpts)


# ---- where the time goes ----------------------------------------------------------------------
def _stages(model: ClickPose, images: torch.Tensor, masks: torch.Tensor, runs: int = 3) -> dict[str, float]:
    """Seconds per stage, the fastest of `runs` extra full forwards (module hooks): the least
    disturbed by other jobs on a shared machine."""
    samples = [_stage_once(model, images, masks) for _ in range(runs)]
    return {stage: min(s[stage] for s in samples) for stage in STAGES}


def _stage_once(model: ClickPose, images: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    encoder = model.transformer.encoder
    with _timed(model.backbone, *model.input_proj) as backbone, _timed(encoder) as enc, \
            _timed(*_linears(encoder)) as gemms, _timed_samplers(encoder) as sampler:
        t0 = time.perf_counter()
        mem = model.encode(images, masks)
        t1 = time.perf_counter()
        model.decode(mem)
        t2 = time.perf_counter()
    return {"backbone": backbone[0], "encoder GEMMs": gemms[0], "encoder sampler": sampler[0],
            "encoder other": enc[0] - gemms[0] - sampler[0],
            "decoder value tables": (t1 - t0) - backbone[0] - enc[0], "decoder": t2 - t1}


def _linears(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Linear, OneDNNLinear, CastLinear))]


@contextmanager
def _timed(*modules: nn.Module) -> Iterator[list[float]]:
    """Accumulates the wall time spent inside `modules` into the yielded one-element list."""
    total, starts = [0.0], {}

    def pre(m, _):
        starts[id(m)] = time.perf_counter()

    def post(m, _, __):
        total[0] += time.perf_counter() - starts.pop(id(m))

    handles = [h for m in modules for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _timed_samplers(module: nn.Module) -> Iterator[list[float]]:
    """Accumulates the wall time of the deformable samplers inside `module`."""
    total = [0.0]
    attns = [m for m in module.modules() if isinstance(m, MSDeformAttn)]
    originals = [m.__dict__.get("sampler") for m in attns]    # an instance override (today's path) or None
    for m in attns:
        def timed(*a, _inner=m.sampler):
            t = time.perf_counter()
            out = _inner(*a)
            total[0] += time.perf_counter() - t
            return out
        m.sampler = timed
    try:
        yield total
    finally:
        for m, original in zip(attns, originals):
            if original is None:
                del m.sampler
            else:
                m.sampler = original


# ---- bfloat16 accuracy on the parity input ----------------------------------------------------
def _bf16_deviation(fill: Path | None, paths: dict[str, CodePath]) -> dict[str, float] | None:
    """Largest keypoint deviation (pixels) of bfloat16 from float32 on the parity input."""
    if "float32" not in paths or "bfloat16" not in paths or paths["float32"].model.config != ClickPoseConfig.r50():
        return None
    npz = _reference_dir(fill) / "clickpose_parity.npz"
    if not npz.exists():
        return None
    import numpy as np
    with np.load(npz) as z:
        image, mask = torch.from_numpy(z["input_image"]).float(), torch.from_numpy(z["input_mask"])
    h, w = image.shape[-2:]
    scale = torch.tensor([w, h], dtype=torch.float64)
    k = paths["float32"].model.config.num_keypoints
    results = {}
    for name in ("float32", "bfloat16"):
        model = paths[name].model
        mem = model.encode(image, mask)
        out = model.decode(mem, with_aux=True)
        top = out["pred_logits"][0].max(-1)[0].topk(20)[1]
        token = out["proposal_index"][0, out["group_index"][0, top]]
        results[name] = (model, mem, token, out["pred_boxes"][0, top], out["pred_keypoints"][0, top, :2 * k])
    f32, b16 = results["float32"], results["bfloat16"]
    same = {int(t): i for i, t in enumerate(b16[2])}
    pairs = [(i, same[int(t)]) for i, t in enumerate(f32[2]) if int(t) in same]
    full = max((float(((f32[4][i] - b16[4][j]).view(-1, 2).double() * scale).abs().max()) for i, j in pairs),
               default=float("nan"))
    boxes, kpts = f32[3][None], f32[4].reshape(1, 20, k, 2)
    rounds = [results[n][0].refine(results[n][1].for_refinement(), boxes, kpts)["pred_keypoints"][0, :, :2 * k]
              for n in ("float32", "bfloat16")]
    round_px = float(((rounds[0] - rounds[1]).view(-1, 2).double() * scale).abs().max())
    return {"round_px": round_px, "full_px": full, "matched": len(pairs)}


def _reference_dir(fill: Path | None) -> Path:
    return fill.parent if fill else Path(__file__).resolve().parents[2].parent / "shared" / "reference"


def _fill(model: ClickPose, path: Path | None) -> str:
    default = _reference_dir(None) / "fill_weights.py"
    path = path or (default if default.exists() else None)
    if path is None or model.config != ClickPoseConfig.r50():
        return "random init"
    import importlib.util
    spec = importlib.util.spec_from_file_location("fill_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for key, t in model.state_dict(keep_vars=True).items():
            if id(t) not in seen:
                t.copy_(torch.from_numpy(module.fill(key, tuple(t.shape))))
                seen[id(t)] = t
    return "official filled weights"


# ---- report -----------------------------------------------------------------------------------
def _report(threads: int, f: dict[str, dict[str, Any]], names: list[str]) -> None:
    first = names[0]
    ms = lambda s: f"{s * 1000:8.1f} ms"
    col = lambda name, key: f"{ms(f[name][key])} {f[first][key] / f[name][key]:5.2f}x"
    print(f"\n{threads} thread(s)" + "".join(f"  {n:>18}" for n in names))
    for key, label in (("full", "full forward"), ("round_20", "round, 20 persons"), ("round_1", "round, 1 person")):
        print(f"  {label:<18}" + "".join(f"  {col(n, key)}" for n in names))
        print(f"  {'  CPU time':<18}" + "".join(f"  {col(n, key + '_cpu')}" for n in names))
    print(f"  {'cached per image':<18}" + "".join(f"  {f[n]['cache_mib']:15.1f} MiB" for n in names))
    print("  where the time of one full forward goes (module hooks, wall, fastest of 3):")
    for stage in STAGES:
        print(f"    {stage:<22}" + "".join(f"  {ms(f[n]['stages'][stage]):>18}" for n in names))
    print(f"  (speed-up columns: {first}'s time / the path's time)")
