"""`ClickPoseBackend`: the label-studio-ml model class over `clickpose_core.predictor.Predictor`.

* Without `context` (pre-annotation) every task's image runs through the full model, in batches.
* With `context` (an editor call from a smart keypoint) the clicks of the task are updated
  (`clicks.py`), and only the decoder loop runs on the cached encoder state.

label-studio-ml 1.0.9 re-creates the model instance on every `/setup`, and Label Studio calls
`/setup` constantly, so nothing heavy lives on the instance: the predictor is one per process,
created on first use (or at import under gunicorn `--preload`), and guarded by one lock because
a forward pass is not re-entrant and two of them would only fight for the same CPU cores.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from label_studio_ml.model import LabelStudioMLBase

from clickpose_core.types import Person

from .clicks import ClickStore, ContextError, TaskClicks, read_group, smart_points_of_draft
from .control_models import ImageFrame, PersonRegions, parse_region_id
from .images import ImageError, ImageLoader
from .label_config import ServedConfig, cached_parse
from .settings import Settings

logger = logging.getLogger(__name__)

_LOCK = threading.RLock()
_STATE: dict[str, Any] = {"predictor": None, "weights": None, "clicks": None}


class TaskError(ValueError):
    """A task of the request is unusable (no image key, bad id); the message is for the user."""


def get_predictor(settings: Settings):
    """The process-wide predictor, loaded once (not per `/setup`)."""
    with _LOCK:
        if _STATE["predictor"] is None or _STATE["weights"] != (settings.weights, settings.device):
            from clickpose_core.predictor import Predictor  # heavy import: torch

            logger.info("loading Click-Pose weights from %s on %s", settings.weights or "<default>", settings.device)
            _STATE["predictor"] = Predictor.from_checkpoint(settings.weights, device=settings.device,
                                                            cache_size=settings.cache_size,
                                                            precision=settings.precision)
            _STATE["weights"] = (settings.weights, settings.device)
            _STATE["clicks"] = ClickStore(capacity=4 * settings.cache_size)
        return _STATE["predictor"]


def _click_store() -> ClickStore:
    return _STATE["clicks"]


@dataclass(frozen=True)
class TaskRef:
    """What the backend needs from one serialized Label Studio task."""

    id: int | None
    url: str
    key: str            # predictor session key: project, task and image identify one session
    raw: dict

    @classmethod
    def of(cls, task: Any, value_key: str, project: str) -> "TaskRef":
        if not isinstance(task, dict):
            raise TaskError("each task must be an object")
        data = task.get("data")
        if not isinstance(data, dict):
            raise TaskError(f"task {task.get('id')!r} has no 'data' object")
        url = data.get(value_key)
        if not isinstance(url, str) or not url:
            raise TaskError(f"task {task.get('id')!r} has no image URL in data.{value_key}")
        tid = task.get("id")
        if tid is not None and (isinstance(tid, bool) or not isinstance(tid, int)):
            raise TaskError(f"task id must be an integer, got {tid!r}")
        digest = hashlib.sha1(f"{project}|{tid}|{url}".encode()).hexdigest()[:16]
        return cls(id=tid, url=url, key=digest, raw=task)


class ClickPoseBackend(LabelStudioMLBase):
    """Label Studio ML backend: pre-annotation and click refinement of human keypoints."""

    settings: Settings = Settings()   # replaced by backend.app.create_app

    def __init__(self, label_config: str | None = None, train_output: Any = None, **kwargs: Any) -> None:
        super().__init__(label_config=label_config, train_output=train_output, **kwargs)
        self.project = str(kwargs.get("project") or "")
        self._served: ServedConfig | None = None

    # -- configuration ------------------------------------------------------------------
    def served(self) -> ServedConfig:
        if self._served is None:
            predictor = get_predictor(self.settings)
            self._served = cached_parse(self.label_config or "", tuple(predictor.config.keypoint_names),
                                        self.settings.score_threshold)
        return self._served

    @property
    def model_version(self) -> str:
        return get_predictor(self.settings).model_version

    # -- label-studio-ml entry point -----------------------------------------------------
    def predict(self, tasks: Sequence[dict], context: Any = None, **kwargs: Any) -> list[dict]:
        served = self.served()
        loader = ImageLoader(self.settings.image_source(self.hostname, self.access_token))
        try:
            if context:
                if len(tasks) != 1:
                    raise TaskError("an interactive request must carry exactly one task")
                if not isinstance(context, dict):
                    raise ContextError("context must be an object")
                return [self._refine(tasks[0], context, served, loader)]
            return self._pre_annotate(tasks, served, loader)
        finally:
            loader.close()

    # -- pre-annotation ------------------------------------------------------------------
    def _pre_annotate(self, tasks: Sequence[dict], served: ServedConfig, loader: ImageLoader) -> list[dict]:
        predictor = get_predictor(self.settings)
        regions = PersonRegions(served.keypoints, served.box)
        refs = [TaskRef.of(t, served.keypoints.value_key, self.project) for t in tasks]
        results: list[dict | None] = [None] * len(refs)
        errors: list[str] = []
        size = self.settings.batch_size
        for start in range(0, len(refs), size):
            chunk = list(range(start, min(start + size, len(refs))))
            images, ok = [], []
            for i in chunk:
                try:
                    images.append(loader.load(refs[i].url, refs[i].id))
                    ok.append(i)
                except ImageError as exc:
                    logger.warning("task %s: %s", refs[i].id, exc)
                    errors.append(f"task {refs[i].id}: {exc}")
            if not ok:
                continue
            with _LOCK:
                batch = predictor.predict_batch([refs[i].key for i in ok], images)
                for i, image, persons in zip(ok, images, batch):
                    frame = ImageFrame(width=image.shape[1], height=image.shape[0])
                    self._remember(refs[i].key, frame, reset=True)
                    shown = [p for p in persons if p.score >= served.keypoints.score_threshold]
                    results[i] = regions.prediction(shown, frame, predictor.model_version)
        if all(r is None for r in results):
            raise ImageError("; ".join(errors) or "no task could be processed")
        # Label Studio needs one item per task in task order; a task whose image failed gets an
        # empty prediction (and a warning in the log) rather than failing the whole batch.
        return [r if r is not None else {"result": [], "score": 0.0, "model_version": predictor.model_version}
                for r in results]

    @staticmethod
    def _remember(key: str, frame: ImageFrame, reset: bool) -> TaskClicks:
        store = _click_store()
        state = store.get(key)
        if state is None or reset:
            state = store.create(key)
        state.frame = frame
        return state

    # -- interactive refinement ----------------------------------------------------------
    def _refine(self, task: dict, context: dict, served: ServedConfig, loader: ImageLoader) -> dict:
        predictor = get_predictor(self.settings)
        ref = TaskRef.of(task, served.keypoints.value_key, self.project)
        regions_in = context.get("result", [])
        if regions_in is None:
            regions_in = []

        image_cache: dict[str, Any] = {}

        def image() -> Any:
            if "img" not in image_cache:
                image_cache["img"] = loader.load(ref.url, ref.id)
            return image_cache["img"]

        store = _click_store()
        with _LOCK:
            state = store.get(ref.key)
            if state is None or getattr(state, "frame", None) is None or predictor.session(ref.key) is None:
                img = image()  # first call for this task in this process: full model once
                frame = ImageFrame(width=img.shape[1], height=img.shape[0])
                predictor.predict(ref.key, img)
                fresh = state is None
                state = self._remember(ref.key, frame, reset=False)
                if fresh:
                    state.seed(smart_points_of_draft(task, served.keypoints, frame))
            frame: ImageFrame = state.frame
            group, points = read_group(regions_in, served.keypoints, frame)
            state.update(group, points)
            session = predictor.session(ref.key)
            shown_rows = {p.index for p in session.persons if p.score >= served.keypoints.score_threshold}
            clicks = state.assign(session.persons, shown_rows)
            persons: list[Person] = predictor.refine(ref.key, clicks, image=image, replace=True)
            clicked_rows = {c.person for c in clicks}
            shown = [p for p in persons
                     if p.score >= served.keypoints.score_threshold or p.index in clicked_rows]
            prediction = PersonRegions(served.keypoints, served.box).prediction(shown, frame, predictor.model_version)
            # A clicked joint is pinned by the predictor in pixels; echo the editor's own percent
            # values so the joint lands exactly where it was clicked (no px <-> % rounding).
            for region in prediction["result"]:
                where = parse_region_id(region["id"])
                if where is not None and where[1] is not None and where in state.latest_pct:
                    region["value"]["x"], region["value"]["y"] = state.latest_pct[where]
            return prediction

    def fit(self, *args: Any, **kwargs: Any) -> dict:
        """Click-Pose is not trained from annotations online; the webhook is acknowledged only."""
        return {}

