"""Evaluation of interactive keypoint annotation: keypoint AP, AP after k clicks, NoC, box AP.

Pure array functions live in `metrics` and `noc`; `runner.evaluate` drives any `Refiner`
(the model through the Predictor, or the manual-correction baseline) through the protocol.
"""
from clickpose_core.evaluation.data import EvalDataset, ImageTruth
from clickpose_core.evaluation.metrics import Detections, coco_ap, grow_boxes, image_keypoint_ap, oks
from clickpose_core.evaluation.noc import clicks_to_reach, match, noc_summary, simulate_clicks
from clickpose_core.evaluation.refiners import ManualCorrection, PredictorRefiner, Refiner
from clickpose_core.evaluation.runner import evaluate

__all__ = ["EvalDataset", "ImageTruth", "Detections", "coco_ap", "grow_boxes", "image_keypoint_ap", "oks",
           "clicks_to_reach", "match", "noc_summary", "simulate_clicks", "ManualCorrection",
           "PredictorRefiner", "Refiner", "evaluate"]
