"""`ClickPoseBackend`: the label-studio-ml model class over `clickpose_core.predictor.Predictor`.

* Without `context` (pre-annotation) every task's image runs through the full model, in batches,
  as many tasks as fit in PREDICT_TIME_BUDGET (`serving.Admission`).
* With `context` (an editor call from a smart keypoint) the clicks of the task are updated
  (`clicks.py`), and only the decoder loop runs on the cached encoder state.

label-studio-ml 1.0.9 re-creates the model instance on every `/setup`, and Label Studio calls
`/setup` constantly, so nothing heavy lives on the instance: one `Engine` per process holds the
predictor, the click store and the admission rules (`serving.py`: interactive first), created on
first use (or at import under gunicorn `--preload`). Images are downloaded before any lane is
taken, so a slow image server only delays its own request.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from label_studio_ml.model import LabelStudioMLBase

from clickpose_core.types import Person

from .clicks import ClickStore, ContextError, read_group, smart_points_of_draft
from .control_models import ImageFrame, PersonRegions, parse_region_id
from .images import ImageError, ImageLoader, decode_image, image_size
from .label_config import ServedConfig, cached_parse
from .serving import Admission, Lanes, PixelBudget
from .settings import Settings

if TYPE_CHECKING:
    from clickpose_core.predictor import Predictor

logger = logging.getLogger(__name__)

PRELABEL_HINT = "clickpose-ls prelabel"


class TaskError(ValueError):
    """A task of the request is unusable (no image key, bad id); the message is for the user."""


@dataclass
class Engine:
    """Everything one process serves with, built once from the settings that loaded the weights."""

    predictor: "Predictor"
    built_from: tuple                        # `Engine.key(settings)` of the settings it was built from
    clicks: ClickStore                       # annotators' clicks per interactive task
    interactive_pixels: PixelBudget          # decoded pixels in flight, interactive lane
    batch_pixels: PixelBudget                # decoded pixels in flight, pre-annotation lane
    admission: Admission                     # how many pre-annotation tasks one request takes
    lanes: Lanes = field(default_factory=Lanes)

    @staticmethod
    def key(settings: Settings) -> tuple:
        """The settings an engine is built from; others (e.g. the score threshold) apply per request."""
        return (settings.weights, settings.device, settings.precision, settings.cache_size,
                settings.prefetch_cache_size,
                settings.max_clicks_per_task, settings.max_pixels_in_flight, settings.predict_time_budget,
                settings.max_tasks_per_request)

    @classmethod
    def build(cls, settings: Settings) -> "Engine":
        from clickpose_core.predictor import Predictor  # heavy import: torch

        logger.info("loading Click-Pose weights from %s on %s", settings.weights or "<default>", settings.device)
        predictor = Predictor.from_checkpoint(settings.weights, device=settings.device,
                                              cache_size=settings.cache_size,
                                              prefetch_size=settings.prefetch_cache_size,
                                              precision=settings.precision)
        return cls(predictor, cls.key(settings),
                   ClickStore(capacity=4 * settings.cache_size, max_clicks=settings.max_clicks_per_task),
                   interactive_pixels=PixelBudget(settings.max_pixels_in_flight),
                   batch_pixels=PixelBudget(settings.max_pixels_in_flight),
                   admission=Admission(settings.predict_time_budget, settings.max_tasks_per_request))


class EngineHolder:
    """The process's one `Engine`; rebuilt only when the settings it is built from change."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def get(self, settings: Settings) -> Engine:
        key = Engine.key(settings)
        engine = self._engine
        if engine is not None and engine.built_from == key:
            return engine
        with self._lock:
            if self._engine is None or self._engine.built_from != key:
                self._engine = Engine.build(settings)
            return self._engine


ENGINE = EngineHolder()


def get_engine(settings: Settings) -> Engine:
    return ENGINE.get(settings)


def get_predictor(settings: Settings) -> "Predictor":
    """The process-wide predictor, loaded once (not per `/setup`)."""
    return ENGINE.get(settings).predictor


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
        digest = hashlib.sha1(f"{project}|{tid}|{url}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return cls(id=tid, url=url, key=digest, raw=task)


def _refuse_repeats(refs: Sequence[TaskRef]) -> None:
    """TaskError for a task sent twice in one request: both would be one predictor session."""
    first: dict[str, int] = {}
    for i, ref in enumerate(refs):
        j = first.setdefault(ref.key, i)
        if j != i:
            raise TaskError(f"tasks[{i}] repeats tasks[{j}] (task {ref.id!r}, same image): send each task once, "
                            "not twice in one request")


class ClickPoseBackend(LabelStudioMLBase):
    """Label Studio ML backend: pre-annotation and click refinement of human keypoints."""

    settings: Settings = Settings()   # replaced by backend.app.create_app

    def __init__(self, label_config: str | None = None, train_output: Any = None, **kwargs: Any) -> None:
        # Not super().__init__: the framework parses the config with its own parser, which raises
        # on what ours reports as a 400 (an XML declaration, broken XML); ours is `served()`.
        self.label_config = label_config
        self.parsed_label_config: dict = {}
        self.train_output = train_output or {}
        self.hostname = kwargs.get("hostname", "")
        self.access_token = kwargs.get("access_token", "")
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
        if context:
            if len(tasks) != 1:
                raise TaskError("an interactive request must carry exactly one task")
            if not isinstance(context, dict):
                raise ContextError("context must be an object")
            return [self._refine(tasks[0], context, served, loader)]
        return self._pre_annotate(tasks, served, loader)

    # -- pre-annotation ------------------------------------------------------------------
    def _pre_annotate(self, tasks: Sequence[dict], served: ServedConfig, loader: ImageLoader) -> list[dict]:
        engine = get_engine(self.settings)
        predictor = engine.predictor
        regions = PersonRegions(served.keypoints, served.box)
        refs = [TaskRef.of(t, served.keypoints.value_key, self.project) for t in tasks]
        _refuse_repeats(refs)
        started = time.monotonic()
        admitted = engine.admission.admit(len(refs))
        results: list[dict | None] = [None] * len(refs)
        errors: list[str] = []
        done = 0
        size = self.settings.batch_size
        for start in range(0, admitted, size):
            chunk = list(range(start, min(start + size, admitted)))
            # Stop before a chunk that would not finish in the budget (the estimate is per image).
            if start and engine.admission.time_left(started) < len(chunk) * engine.admission.seconds_per_image:
                break
            t0 = time.monotonic()
            raw: list[tuple[int, bytes, int]] = []
            for i in chunk:
                try:
                    data = self._fetch_within(loader, refs[i], engine.admission.time_left(started))
                    w, h = image_size(data)
                    raw.append((i, data, w * h))
                except ImageError as exc:
                    logger.warning("task %s: %s", refs[i].id, exc)
                    errors.append(f"task {refs[i].id}: {exc}")
                    results[i] = self._failed(f"image not usable: {exc}")
            done = chunk[-1] + 1
            with engine.batch_pixels.hold(sum(p for _, _, p in raw)):
                images, ok = [], []
                for i, data, _ in raw:
                    try:
                        images.append(decode_image(data, loader.limits.max_pixels))
                        ok.append(i)
                    except ImageError as exc:
                        logger.warning("task %s: %s", refs[i].id, exc)
                        errors.append(f"task {refs[i].id}: {exc}")
                        results[i] = self._failed(f"image not usable: {exc}")
                del raw
                if not ok:
                    continue
                keys = [refs[i].key for i in ok]
                batch = engine.lanes.run_batch(functools.partial(predictor.predict_batch, keys, images, prefetch=True))
                frames = [ImageFrame(width=image.shape[1], height=image.shape[0]) for image in images]
                del images
            engine.admission.observe(time.monotonic() - t0, len(ok))
            for i, frame, persons in zip(ok, frames, batch):
                results[i] = regions.pre_annotation(persons, frame, predictor.model_version)
        if done == len(refs) and not any("result" in r for r in results if r):
            raise ImageError("; ".join(errors) or "no task could be processed")
        if done < len(refs):
            note = self._deferred_note(len(refs), done)
            logger.warning("%s", note)
            # The full note once (Label Studio logs every skipped item), a short one after it, so
            # that a huge selection does not make a reply of hundreds of bytes per deferred task.
            short = f"deferred, see task {refs[done].id}: `{PRELABEL_HINT} --project {self.project or '<id>'}`"
            for i in range(done, len(refs)):
                results[i] = {"error": note if i == done else short}
        # Label Studio needs one item per task in task order. An item without "result" is skipped
        # by Label Studio (it logs the item): that task stays without a prediction, so the next
        # Retrieve Predictions or `clickpose-ls prelabel` picks it up.
        return [r for r in results if r is not None]

    @staticmethod
    def _fetch_within(loader: ImageLoader, ref: "TaskRef", seconds_left: float) -> bytes:
        """The task's image bytes, the download deadline cut to what is left of the time budget."""
        limits = loader.limits
        if seconds_left < limits.deadline:
            cut = dataclasses.replace(limits, deadline=max(seconds_left, 0.5))
            loader = ImageLoader(dataclasses.replace(loader.source, limits=cut))
        return loader.fetch_bytes(ref.url, ref.id)

    def _deferred_note(self, total: int, done: int) -> str:
        budget = self.settings.predict_time_budget
        project = self.project or "<id>"
        return (f"not predicted in this request: {total} tasks were sent, this backend pre-annotates "
                f"{done} per request so that it answers within PREDICT_TIME_BUDGET ({budget:g} s; Label Studio "
                f"gives up after 100 s). Run Retrieve Predictions again for the rest (tasks with a prediction "
                f"are skipped), or pre-label the whole project with `{PRELABEL_HINT} --project {project}`")

    @staticmethod
    def _failed(reason: str) -> dict:
        return {"error": reason}

    # -- interactive refinement ----------------------------------------------------------
    def _refine(self, task: dict, context: dict, served: ServedConfig, loader: ImageLoader) -> dict:
        from clickpose_core.predictor import SessionNotFound  # loaded with the weights already

        engine = get_engine(self.settings)
        predictor = engine.predictor
        ref = TaskRef.of(task, served.keypoints.value_key, self.project)
        regions_in = context.get("result", [])
        if regions_in is None:
            regions_in = []
        if isinstance(regions_in, list) and len(regions_in) > 4 * self.settings.max_clicks_per_task:
            raise ContextError(f"context.result has {len(regions_in)} regions; at most "
                               f"{4 * self.settings.max_clicks_per_task} are read (4 x MAX_CLICKS_PER_TASK)")
        with ExitStack() as held:
            image = None
            for _ in range(2):
                if predictor.session(ref.key) is None:
                    if image is None:
                        # Downloaded and decoded before any lane is taken (once: a retry after an
                        # eviction reuses it), so a slow image server or a large image delays this
                        # request only; the first forward runs beside refinements, never inside them.
                        data = loader.fetch_bytes(ref.url, ref.id)
                        w, h = image_size(data)
                        held.enter_context(engine.interactive_pixels.hold(w * h))
                        image = decode_image(data, loader.limits.max_pixels)
                        del data
                    with engine.lanes.first_forward():
                        predictor.predict(ref.key, image)
                with engine.lanes.interactive():
                    try:
                        return self._refine_locked(engine, ref, task, regions_in, served)
                    except SessionNotFound:
                        pass   # evicted by another task's first forward meanwhile: rebuild it outside the lane
        raise ImageError("the task's cached session was evicted twice in a row (more annotators than "
                         "CLICKPOSE_CACHE_SIZE?); retry")

    def _refine_locked(self, engine: Engine, ref: "TaskRef", task: dict, regions_in: Any,
                       served: ServedConfig) -> dict:
        """One feedback round on the cached session; SessionNotFound (never a full forward) on a miss."""
        predictor, store = engine.predictor, engine.clicks
        session = predictor.session(ref.key)
        if session is None:
            from clickpose_core.predictor import SessionNotFound
            raise SessionNotFound(ref.key)
        state = store.get(ref.key)
        if state is None or state.frame is None:
            h, w = session.size
            frame = ImageFrame(width=int(w), height=int(h))
            state = state or store.create(ref.key)
            state.frame = frame
            state.seed(smart_points_of_draft(task, served.keypoints, frame))
        frame: ImageFrame = state.frame
        group, points = read_group(regions_in, served.keypoints, frame)
        state.update(group, points)
        shown_rows = {p.index for p in session.persons if p.score >= served.keypoints.score_threshold}
        clicks = state.assign(session.persons, shown_rows)
        persons: list[Person] = predictor.refine(ref.key, clicks, replace=True)
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
