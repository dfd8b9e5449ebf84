"""Interactive inference with a per-image session cache.

`predict` runs the whole network once per image and keeps a Session: the encoder output the
decoder needs, the top-`num_select` persons (round 0) and the current state. `refine` then runs only
the pose layers of the decoder (one feedback round) on that cached state, which is what makes
clicks cheap. Sessions live in a bounded, thread-safe cache of two LRU tiers: `active` sessions
(images being refined) and `prefetch` sessions (computed ahead of need, e.g. a batch of
pre-annotations). Filling the prefetch tier never evicts an active session; refining a prefetched
session moves it to the active tier.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import build_from_checkpoint
from .config import ClickPoseConfig
from .image import as_rgb_array
from .interaction import apply_clicks
from .model import EncoderMemory
from .model.kernels import Kernels, Precision
from .postprocess import person_scores, select_top, split_keypoints, to_pixels
from .preprocess import preprocess
from .types import Click, Person
from .weights import WeightsInfo, announce, describe_weights, resolve_default

logger = logging.getLogger(__name__)

ImageInput = Union[np.ndarray, Callable[[], np.ndarray]]


class SessionNotFound(KeyError):
    """refine() was called for an image that is not (or no longer) cached, and no image was given."""

    def __str__(self) -> str:
        return (f"no cached session for image {self.args[0]!r} (never predicted, or evicted from "
                "the cache); call predict() first or pass `image` to refine()")


@dataclass
class State:
    """Normalised person rows of one image: boxes [R, 4] cxcywh, keypoints [R, K, 2], logits [R, 2]."""
    boxes: torch.Tensor
    keypoints: torch.Tensor
    logits: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [self.boxes, self.keypoints, self.logits]


@dataclass
class Session:
    """What is kept per image between calls.

    size: original (H, W); memory: the model's EncoderMemory for this image (batch size 1);
    round0: the top-num_select persons of the full forward; state: the latest round's output;
    clicks: (person, joint) -> Click in pixels, all clicks applied so far; persons: latest result.
    """
    key: str
    size: tuple[int, int]
    memory: EncoderMemory
    round0: State
    state: State
    clicks: dict[tuple[int, int], Click] = field(default_factory=dict)
    persons: list[Person] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        """Bytes held by this session's tensors (encoder memory and person states)."""
        own = sum(t.numel() * t.element_size() for s in (self.round0, self.state) for t in s.tensors())
        return int(self.memory.nbytes()) + own

    @property
    def click_list(self) -> list[Click]:
        return list(self.clicks.values())


class Predictor:
    """Click-Pose inference for one model: full forward once per image, feedback rounds after.

    device: 'cpu' or 'cuda[:n]'; cache_size: active sessions kept (least recently used is dropped);
    prefetch_size: sessions kept from `predict_batch(..., prefetch=True)`, a separate budget (0: none);
    grow_boxes: make every returned box hold its keypoints (the official click-step box rule,
    applied to outputs too) so a box never cuts through its own skeleton;
    precision: 'float32' or 'bfloat16' (used where the hardware has native bf16, else float32
    with a warning; see `clickpose_core.model.kernels`). The predictor runs its own copy of `model` rebuilt for the
    fastest kernels of `device` (`self.kernels`), so the caller's model stays trainable.
    """

    def __init__(self, model: nn.Module, weights_info: WeightsInfo | None = None,
                 device: str | torch.device = "cpu", cache_size: int = 32, grow_boxes: bool = True,
                 prefetch_size: int = 0, precision: Precision = "float32"):
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        if prefetch_size < 0:
            raise ValueError(f"prefetch_size must be >= 0, got {prefetch_size}")
        self.device = _device(device)
        self.kernels = Kernels.select(self.device, precision)
        model = model.to(self.device, torch.float32).eval()
        self.model = self.kernels.apply(copy.deepcopy(model)) if self.kernels != Kernels() else model
        self.precision: Precision = self.kernels.precision
        self.config: ClickPoseConfig = model.config
        self.cache_size = cache_size
        self.grow_boxes = grow_boxes
        # On a CPU a batch of 4 costs 1.3x more per image than single images (the backbone's
        # feature maps outgrow the caches; measured at 800x1088), and padding adds more: batching
        # pays on a GPU only.
        self.forward_batch_size = 1 if self.device.type == "cpu" else 4
        self.weights_info = weights_info.to_dict() if weights_info else {
            "path": None, "kind": "custom", "sha256": None, "licence": "unknown",
            "model_version": "clickpose-untracked"}
        self.model_version: str = self.weights_info["model_version"]
        self.prefetch_size = prefetch_size
        self._sessions: OrderedDict[str, Session] = OrderedDict()     # active tier, LRU first
        self._prefetched: OrderedDict[str, Session] = OrderedDict()   # prefetch tier, LRU first
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | None = None, device: str | torch.device = "cpu",
                        cache_size: int = 32, weights_dir: str | None = None, **kwargs: Any) -> "Predictor":
        """Build from a weights file; None picks `weights.resolve_default(weights_dir)` (which, for
        weights_dir None, looks in the checkout's weights/ folder, not relative to the cwd)."""
        info = resolve_default(weights_dir) if path is None else None
        model, ckpt = build_from_checkpoint(path or info.path, device="cpu")
        licence = ckpt.meta.get("licence")
        if info is None:
            info = describe_weights(path, licence=licence)
        elif licence and info.kind != "official":  # the file's own statement beats the default
            info = dataclasses.replace(info, licence=licence)
        announce(info)
        return cls(model, info, device=device, cache_size=cache_size, **kwargs)

    # ---- full model -------------------------------------------------------------------------
    def predict(self, key: str, image: np.ndarray) -> list[Person]:
        """Detect the top num_select persons (best first); starts a fresh session for `key`."""
        return self.predict_batch([key], [image])[0]

    def predict_batch(self, keys: Sequence[str], images: Sequence[np.ndarray],
                      prefetch: bool = False) -> list[list[Person]]:
        """`predict` for many images, `forward_batch_size` images per padded forward pass.

        prefetch=True keeps the sessions in the prefetch tier: they never evict active sessions,
        and a key that already has an active session keeps it (its clicks are not lost).
        """
        if len(keys) != len(images):
            raise ValueError(f"got {len(keys)} keys for {len(images)} images")
        if len(set(keys)) != len(keys):
            raise ValueError("keys must be distinct within one batch")
        n = self.forward_batch_size
        return [session.persons for a in range(0, len(keys), n)
                for session in self._start_sessions(keys[a:a + n], images[a:a + n], prefetch)]

    def _start_sessions(self, keys: Sequence[str], images: Sequence[np.ndarray],
                        prefetch: bool = False) -> list[Session]:
        rgb = [as_rgb_array(img, f"image {key!r}") for key, img in zip(keys, images)]
        batch = preprocess(rgb, self.config, torch.float32, self.device)
        with torch.inference_mode():
            mem = self.model.encode(batch.images, batch.masks)
            top = select_top(self.model.decode(mem), self.config.num_select)
        sessions = []
        for i, key in enumerate(keys):
            state = State(top["pred_boxes"][i],
                          split_keypoints(top["pred_keypoints"][i], self.config.num_keypoints),
                          top["pred_logits"][i])
            own = mem.for_refinement().select(i, copy=len(keys) > 1)
            session = Session(key, batch.sizes[i], own, state, state)
            session.persons = self._persons(session, pinned=False)
            self._put(session, prefetch)
            sessions.append(session)
        return sessions

    # ---- feedback rounds --------------------------------------------------------------------
    def refine(self, key: str, clicks: Sequence[Click], image: ImageInput | None = None,
               replace: bool = False, pinned: bool = True) -> list[Person]:
        """Run one feedback round with all clicks so far; return persons best first.

        clicks are in original-image pixels. A click on an already clicked (person, joint)
        replaces it; replace=True makes `clicks` the whole click set (dropping a click restarts
        from round 0). pinned=True holds clicked joints exactly (product default); pinned=False lets
        them move like the others, as in the released model's evaluation (which also does not
        re-apply earlier clicks: `evaluation.refiners.OfficialLoop` reproduces it exactly). On a cache miss the image
        (array, or callable returning one) is run through `predict` first, else SessionNotFound.
        """
        session = self._get(key, promote=True)
        if session is None:
            if image is None:
                raise SessionNotFound(key)
            logger.info("session %r not cached; recomputing the full model", key)
            session = self._start_sessions([key], [image() if callable(image) else image])[0]
        with session.lock:
            merged = {} if replace else dict(session.clicks)
            for i, click in enumerate(clicks):
                merged[(click.person, click.joint)] = _check_pixel_click(i, click, session.size)
            if merged == session.clicks:
                return session.persons  # nothing new: another round would only drift
            restart = any(k not in merged for k in session.clicks)
            start = session.round0 if restart else session.state
            session.state = self._round(session, start, list(merged.values()), pinned) if merged else session.round0
            session.clicks = merged
            session.persons = self._persons(session, pinned)
            return session.persons

    def _round(self, session: Session, start: State, clicks: list[Click], pinned: bool) -> State:
        """One feedback round on the rows that have clicks; the other persons are left as they are.

        Decoder groups attend only to themselves, so refining the clicked rows alone gives them
        exactly the values a round over all rows would, while a person nobody touched does not
        drift between rounds (and the round costs 18 tokens per clicked person, not 360).

        A click never lowers a person's score: a refined row keeps the larger of its detection
        logits and the feedback layers' (per class, so the score is the larger of the two). The
        untouched rows keep detection scores, and a feedback score on its own scale would rank a
        clicked person below duplicates nobody clicked; a click is evidence the person is there
        (measured in docs/evaluation.md, "Scores after a click"). The official loop, which re-runs
        every row and ranks by feedback scores alone, is `evaluation.OfficialLoop`.
        """
        h, w = session.size
        normalised = [Click(c.person, c.joint, c.x / w, c.y / h) for c in clicks]
        boxes, kpts, pin = apply_clicks(start.boxes, start.keypoints, normalised)
        rows = torch.tensor(sorted({c.person for c in clicks}), device=boxes.device)
        with torch.inference_mode():
            out = self.model.refine(session.memory, boxes[rows][None], kpts[rows][None],
                                    pin[rows][None] if pinned else None)
        state = State(start.boxes.clone(), start.keypoints.clone(), start.logits.clone())
        state.boxes[rows] = out["pred_boxes"][0]
        state.keypoints[rows] = split_keypoints(out["pred_keypoints"][0], self.config.num_keypoints)
        state.logits[rows] = torch.maximum(out["pred_logits"][0], session.round0.logits[rows])
        return state

    # ---- results ----------------------------------------------------------------------------
    def _persons(self, session: Session, pinned: bool) -> list[Person]:
        state = session.state
        boxes, kpts = to_pixels(state.boxes.double(), state.keypoints.double(), session.size)
        boxes, kpts = boxes.cpu().numpy(), kpts.cpu().numpy()
        scores = person_scores(state.logits.double()).cpu().numpy()
        clicked = np.zeros(kpts.shape[:2], dtype=bool)
        for (p, k), c in session.clicks.items():
            clicked[p, k] = True
            if pinned:  # exact pixels, free of the float32 round trip through normalised units
                kpts[p, k] = (c.x, c.y)
        if self.grow_boxes:
            boxes[:, :2] = np.minimum(boxes[:, :2], kpts.min(axis=1))
            boxes[:, 2:] = np.maximum(boxes[:, 2:], kpts.max(axis=1))
        order = np.argsort(-scores, kind="stable")
        return [Person(int(r), float(scores[r]), boxes[r].copy(), kpts[r].copy(), clicked[r].copy())
                for r in order]

    # ---- cache ------------------------------------------------------------------------------
    def session(self, key: str) -> Session | None:
        """The cached session of `key` (marks it recently used), or None."""
        return self._get(key)

    def cache_bytes(self, key: str) -> int:
        """Bytes held for `key`, 0 when not cached."""
        s = self._get(key)
        return s.nbytes if s else 0

    def forget(self, key: str) -> None:
        with self._lock:
            self._sessions.pop(key, None)
            self._prefetched.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()
            self._prefetched.clear()

    def cached_keys(self, prefetched: bool = False) -> list[str]:
        """Keys of the active (or prefetch) tier from least to most recently used."""
        with self._lock:
            return list(self._prefetched if prefetched else self._sessions)

    def _get(self, key: str, promote: bool = False) -> Session | None:
        """The session of `key` from either tier; promote=True moves a prefetched one to active."""
        with self._lock:
            s = self._sessions.get(key)
            if s is not None:
                self._sessions.move_to_end(key)
                return s
            s = self._prefetched.get(key)
            if s is not None and promote:
                del self._prefetched[key]
                self._insert_active(s)
            return s

    def _put(self, session: Session, prefetch: bool = False) -> None:
        with self._lock:
            if not prefetch:
                self._prefetched.pop(session.key, None)
                self._insert_active(session)
            elif session.key not in self._sessions and self.prefetch_size:
                self._prefetched[session.key] = session
                self._prefetched.move_to_end(session.key)
                while len(self._prefetched) > self.prefetch_size:
                    evicted, _ = self._prefetched.popitem(last=False)
                    logger.debug("evicted prefetched session %r", evicted)

    def _insert_active(self, session: Session) -> None:
        self._sessions[session.key] = session
        self._sessions.move_to_end(session.key)
        while len(self._sessions) > self.cache_size:
            evicted, _ = self._sessions.popitem(last=False)
            logger.debug("evicted session %r", evicted)


def _check_pixel_click(i: int, click: Click, size: tuple[int, int]) -> Click:
    if not isinstance(click, Click):
        raise ValueError(f"click {i}: expected a Click, got {type(click).__name__}")
    if not (math.isfinite(click.x) and math.isfinite(click.y)):
        raise ValueError(f"click {i} {click}: coordinates must be finite numbers")
    h, w = size
    x, y = min(max(float(click.x), 0.0), float(w)), min(max(float(click.y), 0.0), float(h))
    # A joint dragged past the border is held at the border: the model only knows [0, 1] units.
    return click if (x, y) == (click.x, click.y) else Click(click.person, click.joint, x, y)


def _device(device: str | torch.device) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use 'cpu'")
    return d
