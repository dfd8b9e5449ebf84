"""`clickpose eval`: keypoint AP, AP after k clicks, NoC and box AP for each interaction mode."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from clickpose_core.commands import add_precision_argument
from clickpose_core.evaluation.data import EvalDataset
from clickpose_core.evaluation.plot import plot_ap_vs_clicks
from clickpose_core.evaluation.refiners import ManualCorrection, OfficialLoop, PredictorRefiner
from clickpose_core.evaluation.report import format_table
from clickpose_core.evaluation.runner import evaluate

MODES = ("pinned", "official", "manual", "unpinned")


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"click counts must be >= 0, got {text!r}")
    return vals


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return [v / 100 if v > 1 else v for v in vals]      # accept 85 or 0.85


def _modes(text: str) -> list[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in MODES]
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    return vals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="dataset folder with annotations.json and images/ (as written by `clickpose synth`)")
    parser.add_argument("--weights", default=None, help="checkpoint (default: weights.resolve_default())")
    parser.add_argument("--out", required=True, help="folder for results.json and ap_vs_clicks.png")
    parser.add_argument("--clicks", type=_ints, default=[0, 1, 3, 5], help="k for 'AP after k clicks' (default 0,1,3,5)")
    parser.add_argument("--box-clicks", type=_ints, default=[0, 3, 5], help="k for box AP (default 0,3,5)")
    parser.add_argument("--thresholds", type=_floats, default=[0.85, 0.90, 0.95], help="NoC AP thresholds (default 85,90,95)")
    parser.add_argument("--max-rounds", type=int, default=None,
                        help="NoC cap in rounds (default: number of keypoints, the official cap)")
    parser.add_argument("--modes", type=_modes, default=["pinned", "official", "manual"],
                        help=f"comma-separated from {', '.join(MODES)} (default pinned,official,manual)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--device", default="cpu")
    add_precision_argument(parser)


def run(args: argparse.Namespace) -> int:
    from clickpose_core.predictor import Predictor

    dataset = EvalDataset.from_folder(args.data)
    predictor = Predictor.from_checkpoint(args.weights, device=args.device, cache_size=4, precision=args.precision)
    cfg = predictor.config
    if cfg.num_keypoints != dataset.num_keypoints:
        raise SystemExit(f"model has {cfg.num_keypoints} keypoints, dataset {args.data} has {dataset.num_keypoints}")
    ids = dataset.image_ids[: args.limit] if args.limit else dataset.image_ids
    refiners = {"pinned": lambda: PredictorRefiner(predictor, pinned=True),
                "official": lambda: OfficialLoop(predictor),
                "manual": lambda: ManualCorrection(PredictorRefiner(predictor, pinned=True, name="model-only")),
                "unpinned": lambda: PredictorRefiner(predictor, pinned=False)}
    results = []
    for mode in args.modes:
        results.append(evaluate(refiners[mode](), dataset, cfg.sigmas, ap_clicks=args.clicks,
                                box_clicks=args.box_clicks, thresholds=args.thresholds,
                                max_rounds=args.max_rounds, image_ids=ids, progress=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"data": str(args.data), "weights": predictor.weights_info, "model_version": predictor.model_version,
            "precision": predictor.precision}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    curves = {r["mode"]: [(int(k), v["AP"]) for k, v in r["keypoint_ap"].items()] for r in results}
    if any(len(c) for c in curves.values()):
        plot_ap_vs_clicks(curves, out / "ap_vs_clicks.png", title=f"keypoint AP vs clicks ({len(ids)} images)")
    print(format_table(results))
    print(f"wrote {out / 'results.json'}" + (f" and {out / 'ap_vs_clicks.png'}" if any(curves.values()) else ""))
    return 0
