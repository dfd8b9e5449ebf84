#!/usr/bin/env python3
"""Where keypoint AP with no clicks is lost (docs/training.md, "Where AP@0 is lost").

For each pose layer of the decoder: keypoint AP of that layer's keypoints, with the persons the
predictor keeps (its top `num_select` by the last layer's score) and their scores. Then, for the
last layer, the same persons ranked by their best OKS against the truth: an upper bound on what
better person scores alone could give.

    .venv/bin/python scripts/ap_by_layer.py --data data/synth_val_s2 --weights weights/clickpose_demo_synthetic.pth
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clickpose_core.checkpoint import build_from_checkpoint  # noqa: E402
from clickpose_core.evaluation import metrics  # noqa: E402
from clickpose_core.evaluation.data import EvalDataset  # noqa: E402
from clickpose_core.postprocess import person_scores, split_keypoints, to_pixels  # noqa: E402
from clickpose_core.preprocess import preprocess  # noqa: E402


def detections(layer: dict[str, torch.Tensor], keep: torch.Tensor, scores: torch.Tensor, num_keypoints: int,
               size: tuple[int, int]) -> metrics.Detections:
    """One decoder layer's outputs for the kept persons (keep [P] group ids, scores [G]) in pixels."""
    kpt = split_keypoints(layer["pred_keypoints"][0][keep], num_keypoints)
    boxes, kpt = to_pixels(layer["pred_boxes"][0][keep], kpt, size)
    return metrics.Detections(np.arange(len(keep)), scores[keep].double().numpy(),
                              boxes.double().numpy(), kpt.double().numpy())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset folder (annotations.json, images/)")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--limit", type=int, default=100, help="first N images (default 100)")
    args = ap.parse_args()

    model, ckpt = build_from_checkpoint(args.weights, dtype=torch.float32)
    model.eval()
    cfg = ckpt.model_config()
    data = EvalDataset.from_folder(args.data, cfg.num_keypoints)
    ids = data.image_ids[: args.limit]
    per_layer: dict[int, list[dict]] = {}
    oracle: list[dict] = []
    for image_id in ids:
        batch = preprocess([data.image(image_id)], cfg)
        with torch.inference_mode():
            out = model.decode(model.encode(batch.images, batch.masks), with_aux=True)
        scores = person_scores(out["pred_logits"][0])
        keep = scores.topk(cfg.num_select).indices
        layers = out["aux_outputs"][cfg.num_box_decoder_layers:] + [out]
        dets = [detections(layer, keep, scores, cfg.num_keypoints, batch.sizes[0]) for layer in layers]
        for j, det in enumerate(dets):
            per_layer.setdefault(j, []).extend(metrics.coco_results(image_id, det, "keypoints"))
        last, truth = dets[-1], data.truth(image_id)
        best = (metrics.oks(last.keypoints, truth.keypoints, truth.areas, cfg.sigmas).max(1)
                if truth.num_people else np.zeros(len(keep)))
        ranked = metrics.Detections(last.indices, best + 1e-3 * last.scores, last.boxes, last.keypoints)
        oracle.extend(metrics.coco_results(image_id, ranked, "keypoints"))

    def row(name: str, results: list[dict]) -> None:
        s = metrics.coco_ap(data.coco, results, "keypoints", ids, cfg.sigmas)
        print(f"{name:<34} " + "  ".join(f"{k} {100 * s[k]:5.1f}" for k in ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR")))

    print(f"{args.weights}: {len(ids)} images of {args.data}, {cfg.num_pose_layers} pose layers")
    for j, results in per_layer.items():
        row(f"pose layer {j + 1} of {cfg.num_pose_layers}", results)
    row("last layer, ranked by true OKS", oracle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
