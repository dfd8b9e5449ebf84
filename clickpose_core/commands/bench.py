"""`clickpose bench`: full forward against one feedback round, medians of several runs in one process.

Prints, for one image of the given size: the full forward (encode + decode) with our sampler and
with the official CPU algorithm (per-level grid_sample, value projections recomputed every
round), one feedback round over the official 20 rows and over one clicked person, their ratios,
the bytes cached per image and the peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..config import ClickPoseConfig
from ..model import ClickPose, build_model
from ..model.deformable_attention import MSDeformAttn, deformable_sample_reference


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="800x1216", help="input HxW after resizing (default: 800x1216)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median is printed)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--preset", choices=["r50", "small", "tiny"], default="r50")
    p.add_argument("--fill", type=Path, default=None,
                   help="fill_weights.py of the parity fixture, for the official filled weights "
                        "(default: ../shared/reference/fill_weights.py when present, else random init)")
    p.add_argument("--skip-baseline", action="store_true", help="do not time the official algorithm")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    cfg = getattr(ClickPoseConfig, args.preset)()
    model = build_model(cfg).eval()
    weights = _fill(model, args.fill)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, h, w, generator=g)
    masks = torch.zeros(1, h, w, dtype=torch.bool)
    print(f"clickpose bench: {args.preset} ({weights}), input {h}x{w}, float32, "
          f"{torch.get_num_threads()} threads, median of {args.runs} runs")

    with torch.inference_mode():
        full, (mem, out) = _median(lambda: _forward(model, images, masks), args.runs)
        top = out["pred_logits"][0].max(-1)[0].topk(cfg.num_select)[1]
        boxes = out["pred_boxes"][:, top]
        kpts = out["pred_keypoints"][:, top, :2 * cfg.num_keypoints].reshape(1, -1, cfg.num_keypoints, 2)
        cached = mem.for_refinement()
        round_all, _ = _median(lambda: model.refine(cached, boxes, kpts), args.runs * 4)
        round_one, _ = _median(lambda: model.refine(cached, boxes[:, :1], kpts[:, :1]), args.runs * 4)
        figures = {"input": [h, w], "preset": args.preset, "threads": torch.get_num_threads(),
                   "full_forward_s": full, "refine_round_20_rows_s": round_all,
                   "refine_round_1_person_s": round_one, "cache_bytes_per_image": cached.nbytes(),
                   # before the baseline runs: its grid_sample path needs far more memory
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if not args.skip_baseline:
            with _official_algorithm(model):
                base_full, (_, base_out) = _median(lambda: _forward(model, images, masks), max(1, args.runs // 2))
                base_round, _ = _median(lambda: _official_round(model, mem, boxes, kpts), args.runs * 2)
            diff = max(float((out[k] - base_out[k]).abs().max()) for k in out)
            figures.update(official_full_forward_s=base_full, official_refine_round_s=base_round,
                           full_forward_max_abs_diff=diff)
    _report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def _forward(model: ClickPose, images: torch.Tensor, masks: torch.Tensor):
    mem = model.encode(images, masks)
    return mem, model.decode(mem)


def _official_round(model: ClickPose, mem, boxes, kpts):
    """A round as the official code runs it: the pose layers re-project the memory every time."""
    layers = model.transformer.decoder.layers[model.config.num_box_decoder_layers:]
    values = [layer.cross_attn.project_values(mem.memory, mem.padding, mem.layout) for layer in layers]
    fresh = type(mem)(mem.memory, mem.padding, mem.layout, mem.valid_ratios, values)
    return model.refine(fresh, boxes, kpts)


@contextmanager
def _official_algorithm(model: ClickPose) -> Iterator[None]:
    attns = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    for m in attns:
        m.sampler = deformable_sample_reference
    try:
        yield
    finally:
        for m in attns:
            del m.sampler


def _median(fn: Callable, runs: int):
    result = fn()                                   # warm-up (allocations, thread pool)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def _fill(model: ClickPose, path: Path | None) -> str:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "fill_weights.py"
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


def _report(f: dict) -> None:
    ms = lambda s: f"{s * 1000:9.1f} ms"
    print(f"  full forward (encode + decode)      {ms(f['full_forward_s'])}")
    print(f"  feedback round, 20 rows (official)  {ms(f['refine_round_20_rows_s'])}")
    print(f"  feedback round, 1 clicked person    {ms(f['refine_round_1_person_s'])}")
    print(f"  ratio full / round (20 rows)        {f['full_forward_s'] / f['refine_round_20_rows_s']:9.1f} x")
    print(f"  ratio full / round (1 person)       {f['full_forward_s'] / f['refine_round_1_person_s']:9.1f} x")
    if "official_full_forward_s" in f:
        print(f"  official algorithm: full forward    {ms(f['official_full_forward_s'])}"
              f"   (ours is {f['official_full_forward_s'] / f['full_forward_s']:.2f}x faster, "
              f"max abs output difference {f['full_forward_max_abs_diff']:.1e})")
        print(f"  official algorithm: feedback round  {ms(f['official_refine_round_s'])}"
              f"   (ours is {f['official_refine_round_s'] / f['refine_round_20_rows_s']:.2f}x faster)")
    print(f"  cached per image                    {f['cache_bytes_per_image'] / 2**20:9.1f} MiB")
    print(f"  peak RSS (our path)                 {f['peak_rss_mb']:9.1f} MiB")
