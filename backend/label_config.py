"""Which labeling-config tags the backend serves, and how their labels map to model joints.

Parsing uses label-studio-sdk's `LabelInterface`, so the backend reads a config the way Label
Studio does. The result is a small immutable `ServedConfig`; anything the backend cannot serve
raises `LabelConfigError` with a message meant for the person who wrote the config (it is
returned by `/setup`, which Label Studio shows when the backend is connected).
"""
from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from label_studio_sdk.label_interface import LabelInterface


_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


class LabelConfigError(ValueError):
    """The labeling config cannot be served by this backend."""


def normalise_joint_name(name: str) -> str:
    """"Left Wrist", "left-wrist", "left_wrist" and "LeftWrist" all become "leftwrist"."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _threshold(attrs: dict, tag: str, default: float) -> float:
    raw = attrs.get("model_score_threshold")
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LabelConfigError(f'<{tag}> model_score_threshold="{raw}" is not a number') from None
    if not 0.0 <= value <= 1.0:
        raise LabelConfigError(f'<{tag}> model_score_threshold="{raw}" must be between 0 and 1')
    return value


@dataclass(frozen=True)
class KeypointControl:
    """A `KeyPointLabels` tag: label value -> joint index of the model."""

    from_name: str
    to_name: str
    value_key: str                       # task data key of the image, "$image" -> "image"
    joints: dict[str, int]               # label -> model joint index (labels that map to nothing are absent)
    score_threshold: float
    stroke_width: float                  # px, used for the region's `width` (the editor's point size)

    def joint_of(self, label: str) -> int | None:
        return self.joints.get(label)

    def label_of(self, joint: int) -> str | None:
        for label, j in self.joints.items():
            if j == joint:
                return label
        return None


@dataclass(frozen=True)
class BoxControl:
    """A `RectangleLabels` tag that receives one box per person (shown with the person's joints)."""

    from_name: str
    to_name: str
    label: str


@dataclass(frozen=True)
class ServedConfig:
    keypoints: KeypointControl
    box: BoxControl | None
    unmapped_labels: tuple[str, ...]     # KeyPointLabels labels ignored by the model (reported by /setup)


def _map_labels(tag_name: str, labels_attrs: dict, names: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    by_name = {normalise_joint_name(n): i for i, n in enumerate(names)}
    joints: dict[str, int] = {}
    unmapped: list[str] = []
    for label, tag in labels_attrs.items():
        raw_index = tag.attr.get("model_index")
        if raw_index not in (None, ""):
            try:
                index = int(raw_index)
            except ValueError:
                raise LabelConfigError(
                    f'<Label value="{label}"> in <KeyPointLabels name="{tag_name}">: '
                    f'model_index="{raw_index}" is not an integer') from None
            if not 0 <= index < len(names):
                raise LabelConfigError(
                    f'<Label value="{label}">: model_index={index} is out of range, the model has '
                    f"{len(names)} keypoints (0..{len(names) - 1})")
        else:
            index = by_name.get(normalise_joint_name(label))
            if index is None:
                unmapped.append(label)
                continue
        if index in joints.values():
            other = next(k for k, v in joints.items() if v == index)
            raise LabelConfigError(
                f'labels "{other}" and "{label}" both map to model keypoint {index} ({names[index]}); '
                "each joint needs exactly one label")
        joints[label] = index
    return joints, unmapped


def parse_label_config(config: str, keypoint_names: Sequence[str], default_threshold: float) -> ServedConfig:
    """Find the served `KeyPointLabels` (and optional `RectangleLabels`) of `config`.

    Labels map to joints by `model_index`, else by joint name written any common way. Tags with
    `model_skip="true"` are ignored, as in the Label Studio YOLO backend.
    """
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("the labeling config is empty")
    # lxml refuses an encoding declaration in an already decoded string; the text is decoded.
    config = _XML_DECLARATION.sub("", config, count=1)
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several types for broken XML
        raise LabelConfigError(f"the labeling config is not valid XML: {exc}") from None

    kp_tags = [c for c in interface.controls
               if c.tag == "KeyPointLabels" and not _truthy(c.attr.get("model_skip"))]
    if not kp_tags:
        raise LabelConfigError(
            "the labeling config has no <KeyPointLabels> tag (without model_skip) for the backend to fill; "
            "add one with labels named after COCO joints (e.g. nose, left_wrist) or with model_index")
    errors: list[str] = []
    for tag in kp_tags:
        images = [o for o in tag.objects if o.tag == "Image"]
        if not images:
            errors.append(f'<KeyPointLabels name="{tag.name}"> does not point at an <Image>')
            continue
        image = images[0]
        try:
            joints, unmapped = _map_labels(tag.name, tag.labels_attrs, keypoint_names)
        except LabelConfigError as exc:
            errors.append(str(exc))
            continue
        if not joints:
            errors.append(
                f'no label of <KeyPointLabels name="{tag.name}"> matches a model keypoint '
                f"({', '.join(keypoint_names)}); name labels after the joints or set model_index")
            continue
        value = str(image.value or "")
        if not value.startswith("$"):
            errors.append(f'<Image name="{image.name}"> must take its URL from the task data (value="$image")')
            continue
        try:
            stroke = float(tag.attr.get("strokeWidth") or 1.0)
        except ValueError:
            stroke = 1.0
        kp = KeypointControl(
            from_name=tag.name, to_name=image.name, value_key=value[1:], joints=joints,
            score_threshold=_threshold(tag.attr, "KeyPointLabels", default_threshold), stroke_width=stroke)
        box = None
        for rect in interface.controls:
            if (rect.tag == "RectangleLabels" and not _truthy(rect.attr.get("model_skip"))
                    and image.name in (rect.to_name or [])):
                labels = list(rect.labels)
                if not labels:
                    continue
                person = next((l for l in labels if l.lower() == "person"), labels[0])
                box = BoxControl(from_name=rect.name, to_name=image.name, label=person)
                break
        return ServedConfig(keypoints=kp, box=box, unmapped_labels=tuple(unmapped))
    raise LabelConfigError("; ".join(errors))


class ConfigCache:
    """Parsed configs by SHA-256 of the XML: Label Studio sends the same config with every request.

    Keys are digests, so the cache holds `capacity` small `ServedConfig`s, never the (up to
    MAX_REQUEST_BYTES) config strings themselves; configs that fail are not cached.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._parsed: "OrderedDict[tuple[str, tuple[str, ...], float], ServedConfig]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, config: str, keypoint_names: tuple[str, ...], default_threshold: float) -> ServedConfig:
        if not isinstance(config, str):
            raise LabelConfigError("the labeling config must be a string")
        digest = hashlib.sha256(config.encode("utf-8", "surrogatepass")).hexdigest()
        key = (digest, tuple(keypoint_names), float(default_threshold))
        with self._lock:
            if key in self._parsed:
                self._parsed.move_to_end(key)
                return self._parsed[key]
        served = parse_label_config(config, keypoint_names, default_threshold)
        with self._lock:
            self._parsed[key] = served
            while len(self._parsed) > self.capacity:
                self._parsed.popitem(last=False)
        return served

    def __len__(self) -> int:
        return len(self._parsed)


CONFIGS = ConfigCache()


def cached_parse(config: str, keypoint_names: tuple[str, ...], default_threshold: float) -> ServedConfig:
    """`parse_label_config` memoised in `CONFIGS`."""
    return CONFIGS.get(config, keypoint_names, default_threshold)
