"""Click-Pose as a nuclio function in CVAT's serverless "detector" format (self-hosted CVAT).

CVAT posts `{"image": <base64 frame>, "threshold": <float, optional>}` and expects a JSON list of
`{"label", "type": "skeleton", "confidence", "elements": [{"label", "type": "points", "points": [x, y],
"outside"}]}` (plus `"type": "rectangle"` boxes here); it keeps the labels the user mapped to the
task and drops the rest. `cvat/nuclio/main.py` re-exports `init_context` and `handler`.
Configuration comes from the function's environment (`spec.env` in function.yaml), read once.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

from clickpose_core.image import ImageError, load_image
from clickpose_core.predictor import Predictor

from .shapes import DEFAULT_SCORE_THRESHOLD, PersonShape, person_shapes
from .skeleton import DEFAULT_LABEL, SkeletonLabel

BOX_LABEL = "person-box"


class BadRequest(ValueError):
    """The request body is not what CVAT sends; the message says what is wrong."""


@dataclass(frozen=True)
class NuclioSettings:
    """CLICKPOSE_WEIGHTS (path, "" = default weights in `weights_dir`), CLICKPOSE_DEVICE,
    CLICKPOSE_SCORE_THRESHOLD (used when a request has no threshold)."""
    weights: str = ""
    device: str = "cpu"
    score_threshold: float = DEFAULT_SCORE_THRESHOLD

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "NuclioSettings":
        raw = env.get("CLICKPOSE_SCORE_THRESHOLD", "").strip()
        try:
            threshold = float(raw) if raw else DEFAULT_SCORE_THRESHOLD
        except ValueError:
            raise ValueError(f"CLICKPOSE_SCORE_THRESHOLD must be a number, got {raw!r}") from None
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"CLICKPOSE_SCORE_THRESHOLD must be between 0 and 1, got {threshold}")
        return cls(env.get("CLICKPOSE_WEIGHTS", "").strip(),
                   env.get("CLICKPOSE_DEVICE", "cpu").strip() or "cpu", threshold)


@dataclass(frozen=True)
class DetectRequest:
    """A parsed request: the encoded image bytes and the threshold (None = the default)."""
    image: bytes
    threshold: float | None


class PoseDetector:
    """Predictor + label names -> CVAT's serverless answer for one frame."""

    def __init__(self, predictor: Predictor, settings: NuclioSettings, label: str = DEFAULT_LABEL,
                 box_label: str = BOX_LABEL) -> None:
        self.predictor = predictor
        self.settings = settings
        self.skeleton = SkeletonLabel.from_config(predictor.config, label)
        self.box_label = box_label

    def __call__(self, request: DetectRequest) -> list[dict[str, Any]]:
        try:
            rgb = load_image(request.image)
        except ImageError as e:
            raise BadRequest(f'"image": {e}') from e
        threshold = self.settings.score_threshold if request.threshold is None else request.threshold
        persons = self.predictor.predict("nuclio", rgb)
        self.predictor.forget("nuclio")
        h, w = rgb.shape[:2]
        return [a for s in person_shapes(persons, w, h, threshold) for a in self._person(s)]

    def _person(self, s: PersonShape) -> list[dict[str, Any]]:
        elements = [{"label": name, "type": "points", "points": list(xy), "outside": False}
                    for name, xy in zip(self.skeleton.keypoints, s.points)]
        skeleton = {"label": self.skeleton.name, "type": "skeleton", "confidence": s.score,
                    "elements": elements}
        box = {"label": self.box_label, "type": "rectangle", "confidence": s.score, "points": list(s.box)}
        return [skeleton, box]


def parse_body(body: Any) -> DetectRequest:
    """event.body (a dict when nuclio decoded the JSON, else bytes/str) -> DetectRequest."""
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    encoded = body.get("image")
    if not isinstance(encoded, str) or not encoded:
        raise BadRequest('the request body has no "image" (a base64 string of the frame)')
    try:
        image = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest('"image" is not valid base64') from None
    threshold = body.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, str)):
            raise BadRequest(f'"threshold" must be a number between 0 and 1, got {threshold!r}')
        try:
            threshold = float(threshold)
        except ValueError:
            raise BadRequest(f'"threshold" must be a number between 0 and 1, got {threshold!r}') from None
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise BadRequest(f'"threshold" must be a number between 0 and 1, got {threshold!r}')
    return DetectRequest(image, threshold)


def init_context(context: Any, weights_dir: str | None = None) -> None:
    """Load the model once per worker; weights_dir: where default weights are looked for."""
    settings = NuclioSettings.from_env(os.environ)
    predictor = Predictor.from_checkpoint(settings.weights or None, device=settings.device,
                                          cache_size=1, weights_dir=weights_dir)
    context.user_data.detector = PoseDetector(predictor, settings)
    context.logger.info(f"Click-Pose ready: {predictor.model_version} on {settings.device}")


def handler(context: Any, event: Any) -> Any:
    """One CVAT request -> 200 with the JSON list, or 400 with {"error": ...} for a bad body."""
    try:
        result, status = context.user_data.detector(parse_body(event.body)), 200
    except BadRequest as e:
        context.logger.warn(f"bad request: {e}")
        result, status = {"error": str(e)}, 400
    return context.Response(body=json.dumps(result), headers={}, content_type="application/json",
                            status_code=status)
