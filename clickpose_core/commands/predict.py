"""`clickpose predict IMAGE [IMAGE...]`: detect people; write <name>.json and <name>.png per image."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import cv2
import numpy as np

from ..checkpoint import CheckpointError
from . import add_precision_argument
from ..image import ImageError, load_image
from ..types import Person


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--weights", default=None,
                        help="weights file; default: official interactive R50 in --weights-dir, "
                             "else the demo weights there")
    parser.add_argument("--weights-dir", default=None,
                        help="where default weights live (default: the checkout's weights/ folder, "
                             "then ./weights)")
    parser.add_argument("--out", default="predictions", help="output folder (created if missing)")
    parser.add_argument("--score-threshold", type=float, default=0.3,
                        help="keep persons scoring at least this (0..1)")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    add_precision_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..predictor import Predictor  # late import keeps `clickpose --help` fast
    from ..visualize import draw_persons

    if not 0.0 <= args.score_threshold <= 1.0:
        return _fail(f"--score-threshold must be between 0 and 1, got {args.score_threshold}")
    try:
        predictor = Predictor.from_checkpoint(args.weights, device=args.device, cache_size=1,
                                              weights_dir=args.weights_dir, precision=args.precision)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        return _fail(str(e))
    os.makedirs(args.out, exist_ok=True)
    failed, used = 0, set()
    for path in args.images:
        try:
            image = load_image(path)
        except ImageError as e:
            failed += 1
            print(f"clickpose predict: skipping: {e}", file=sys.stderr)
            continue
        persons = [p for p in predictor.predict(path, image) if p.score >= args.score_threshold]
        predictor.forget(path)  # one-shot use: no session to keep
        name = _unique_name(path, used)
        record = _record(path, image, persons, predictor, args.score_threshold)
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(record, f, indent=1)
        drawn = draw_persons(image, persons, predictor.config)
        cv2.imwrite(os.path.join(args.out, name + ".png"), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        print(f"{path}: {len(persons)} person(s) -> {os.path.join(args.out, name)}.json/.png")
    return 1 if failed else 0


def _record(path: str, image: np.ndarray, persons: list[Person], predictor: Any,
            threshold: float) -> dict[str, Any]:
    cfg = predictor.config
    info = predictor.weights_info
    return {
        "image": path,
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "model_version": predictor.model_version,
        "weights": {k: info[k] for k in ("kind", "licence", "sha256")},
        "keypoint_names": list(cfg.keypoint_names),
        "skeleton": [list(pair) for pair in cfg.skeleton],
        "score_threshold": threshold,
        "precision": predictor.precision,
        "persons": [{"index": p.index, "score": p.score, "box_xyxy": p.box.tolist(),
                     "keypoints": p.keypoints.tolist()} for p in persons],
    }


def _unique_name(path: str, used: set[str]) -> str:
    # Same file name in two folders must not overwrite the first result.
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def _fail(message: str) -> int:
    print(f"clickpose predict: error: {message}", file=sys.stderr)
    return 2
