"""`clickpose-ls prelabel`: pre-label a whole Label Studio project, resumable and exactly once.

1. Snapshot: the selected tasks that have no prediction of model version `MV`
   (`LabelStudioProject.partition`: the server-side filter, then an exact client check).
2. Inference, in task order (`task_inference.serial_results`) or on Ray (`prelabel_ray`), while a
   writer thread sends finished chunks to Label Studio behind it (a queue of two chunks).
3. Each chunk is written by `ChunkWriter`: re-read which of its tasks already have an `MV`
   prediction, import only the missing ones in one bulk call (never retried by the SDK), and
   after any error, even one where the server may have committed (timeout, lost connection,
   5xx), re-read before sending again.

Label Studio 1.23 imports a bulk request with one `bulk_create` (one database transaction), so a
request is committed wholly or not at all; `created` counts the predictions it kept (its legacy
path silently drops a prediction that fails validation, which is then reported as failed).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .label_config import cached_parse
from .ls_client import AmbiguousWrite, Credentials, LabelStudioError, LabelStudioProject
from .settings import Settings
from .task_inference import Loaders, TaskPredictor, TaskResult, serial_results

logger = logging.getLogger(__name__)

DROPPED = "Label Studio did not store the prediction (it failed Label Studio's validation; see its log)"


@dataclass
class Report:
    """What a run did, per task id; written by `--report` as JSON."""

    project: int
    model_version: str
    selected: int = 0
    done: list[int] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)     # {"id", "reason"}: nothing to do
    failed: list[dict] = field(default_factory=list)      # {"id", "reason"}: no prediction written
    duplicates: list[int] = field(default_factory=list)   # tasks found with more than one MV prediction
    had_version: int = 0                                  # selected tasks that already had an MV prediction
    interrupted: bool = False
    error: str | None = None        # the error that stopped the run, if one did
    seconds: float = 0.0
    # time.time() when the model was ready (the earliest Ray actor) and of the last settled chunk:
    # their span gives the steady rate, without weight loading, the snapshot or Ray start-up
    model_ready_at: float | None = None
    last_write_at: float | None = None

    def fail(self, task_id: int, reason: str) -> None:
        self.failed.append({"id": int(task_id), "reason": reason})

    def to_json(self) -> dict:
        return {"project": self.project, "model_version": self.model_version, "selected": self.selected,
                "done": sorted(self.done), "skipped": self.skipped, "failed": self.failed,
                "duplicates": sorted(self.duplicates), "interrupted": self.interrupted,
                "error": self.error, "seconds": round(self.seconds, 2),
                "steady_tasks_per_s": None if self.steady_rate is None else round(self.steady_rate, 4)}

    @property
    def steady_rate(self) -> float | None:
        """Tasks settled per second from the model being ready to the last write."""
        settled = len(self.done) + len(self.failed)
        if not settled or self.model_ready_at is None or self.last_write_at is None:
            return None
        span = self.last_write_at - self.model_ready_at
        return settled / span if span > 0 else None

    def summary(self) -> str:
        rate = len(self.done) / self.seconds if self.seconds > 0 else 0.0
        text = (f"prelabel project {self.project} ({self.model_version}): {len(self.done)} predictions written, "
                f"{len(self.failed)} failed, {len(self.skipped)} skipped, in {self.seconds:.1f} s "
                f"({rate:.2f} tasks/s)")
        if self.duplicates:
            text += (f"; {len(self.duplicates)} tasks have more than one prediction of this model version "
                     "(another writer ran at the same time?)")
        if self.interrupted:
            text += "; interrupted: run the same command again to resume"
        return text


@dataclass
class ChunkOutcome:
    done: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)


class ChunkWriter:
    """Writes one chunk of predictions so that each task ends with exactly one of model version `mv`.

    `project` needs `version_counts(ids, mv)` and `import_predictions(predictions)`; attempts and
    backoff bound the retries after errors whose outcome is unknown.
    """

    def __init__(self, project: LabelStudioProject, mv: str, attempts: int = 5, backoff: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.project, self.mv = project, mv
        self.attempts, self.backoff, self.sleep = attempts, backoff, sleep

    def write(self, predictions: dict[int, dict]) -> ChunkOutcome:
        ids = list(predictions)
        error: Exception | None = None
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(min(self.backoff * 2 ** (attempt - 1), 60.0))
            try:
                counts = self.project.version_counts(ids, self.mv)
            except LabelStudioError as exc:   # reading is safe: try again
                if exc.status in (401, 403, 404):
                    raise
                error = exc
                continue
            missing = [i for i in ids if counts[i] == 0]
            if not missing:
                return self._settle(counts, reason="")
            body = [{**predictions[i], "task": i} for i in missing]
            try:
                created = self.project.import_predictions(body)
            except AmbiguousWrite as exc:      # maybe committed: the next attempt re-reads first
                logger.warning("%s; re-reading before sending again", exc)
                error = exc
                continue
            except LabelStudioError as exc:    # refused: nothing of this request was stored
                if exc.status in (401, 403, 404):
                    raise
                return self._settle(counts, reason=str(exc))
            if created == len(missing):
                return self._settle({**counts, **{i: 1 for i in missing}}, reason="")
            # Fewer created than sent: find out which were kept; the rest would be dropped again.
            try:
                return self._settle(self.project.version_counts(ids, self.mv), reason=DROPPED)
            except LabelStudioError as exc:
                error = exc
        raise LabelStudioError(f"writing a chunk of {len(ids)} predictions failed {self.attempts} times "
                               f"(last: {error}); run the same command again to resume")

    @staticmethod
    def _settle(counts: dict[int, int], reason: str) -> ChunkOutcome:
        out = ChunkOutcome()
        for task_id, n in counts.items():
            if n >= 1:
                out.done.append(task_id)
                if n > 1:
                    out.duplicates.append(task_id)
            else:
                out.failed.append((task_id, reason or "no prediction was stored"))
        return out


@dataclass(frozen=True)
class Selection:
    """Which tasks to consider: a view, explicit ids, or the whole project; at most `limit` pending."""

    view: int | None = None
    task_ids: tuple[int, ...] | None = None
    limit: int | None = None


def snapshot(project: LabelStudioProject, mv: str, selection: Selection, report: Report) -> list[dict]:
    """The pending tasks (id order), fixed before any write; the others go to `report.skipped`."""
    wanted: set[int] | None = None
    if selection.view is not None:
        wanted = project.view_task_ids(selection.view)
    elif selection.task_ids is not None:
        wanted = set(selection.task_ids)
    todo, done = project.partition(mv)
    pending = {t["id"]: {"id": t["id"], "data": t.get("data")} for t in todo if wanted is None or t["id"] in wanted}
    had = [i for i in done if wanted is None or i in wanted]
    report.skipped.extend({"id": i, "reason": f"already has a prediction of {mv}"} for i in had)
    report.had_version = len(had)
    if wanted is not None:
        report.skipped.extend({"id": i, "reason": f"not a task of project {project.id}"}
                              for i in sorted(wanted - set(pending) - set(had)))
    tasks = [pending[i] for i in sorted(pending)]
    if selection.limit is not None and len(tasks) > selection.limit:
        report.skipped.extend({"id": t["id"], "reason": f"beyond --limit {selection.limit}"}
                              for t in tasks[selection.limit:])
        tasks = tasks[:selection.limit]
    report.selected = len(tasks)
    return tasks


class Progress:
    """A tqdm bar over tasks (images/s, ETA) with the written and failed counts."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="img", desc="prelabel", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, smoothing=0.1)
        self.written = self.failed = 0
        self._lock = threading.Lock()

    def inferred(self) -> None:
        with self._lock:
            self.bar.update(1)

    def settled(self, written: int, failed: int) -> None:
        with self._lock:
            self.written += written
            self.failed += failed
            self.bar.set_postfix(written=self.written, failed=self.failed, refresh=False)

    def close(self) -> None:
        self.bar.close()


class _Writer(threading.Thread):
    """Writes chunks from a bounded queue while inference goes on; remembers the first fatal error."""

    def __init__(self, writer: ChunkWriter, report: Report, progress: Progress) -> None:
        super().__init__(name="clickpose-writer", daemon=True)
        self.writer, self.report, self.progress = writer, report, progress
        self.chunks: queue.Queue = queue.Queue(maxsize=2)
        self.error: Exception | None = None

    def run(self) -> None:
        while True:
            chunk = self.chunks.get()
            if chunk is None:
                return
            if self.error is not None:
                continue   # drain: the run is stopping
            try:
                outcome = self.writer.write(chunk)
            except Exception as exc:  # noqa: BLE001 - reported by the main thread, which stops the run
                self.error = exc
                continue
            self.report.done.extend(outcome.done)
            self.report.duplicates.extend(outcome.duplicates)
            for task_id, reason in outcome.failed:
                self.report.fail(task_id, reason)
            self.progress.settled(len(outcome.done), len(outcome.failed))
            self.report.last_write_at = time.time()


def run_chunks(results: Iterable[TaskResult], writer: ChunkWriter, report: Report, chunk: int,
               progress: Progress) -> None:
    """Group results into chunks of `chunk` predictions and write them behind the inference.

    A KeyboardInterrupt stops the inference; chunks already complete are still written, a
    partial chunk is dropped (its tasks are still pending for the next run).
    """
    thread = _Writer(writer, report, progress)
    thread.start()
    report.model_ready_at = time.time()   # in this process the model is loaded; Ray actors say when they are
    actors_ready: set[float] = set()
    buffer: dict[int, dict] = {}
    try:
        for result in results:
            if result.model_ready_at is not None:
                actors_ready.add(result.model_ready_at)
                report.model_ready_at = min(actors_ready)
            progress.inferred()
            if result.prediction is None:
                report.fail(result.task_id, result.error or "no prediction")
                progress.settled(0, 1)
            else:
                buffer[result.task_id] = result.prediction
            if len(buffer) >= chunk:
                thread.chunks.put(buffer)
                buffer = {}
            if thread.error is not None:
                break
        if buffer and thread.error is None:
            thread.chunks.put(buffer)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        thread.chunks.put(None)
        thread.join()
    if thread.error is not None:
        raise thread.error


@dataclass(frozen=True)
class PrelabelConfig:
    """Everything one run needs; built by `clickpose-ls prelabel` from its flags and the environment.

    settings: the backend's `Settings` (score threshold, image hosts and limits, the same
    environment variables as the server); ray: None (in this process), "local" or a cluster address.
    """

    url: str
    api_key: str = field(repr=False)
    project: int
    settings: Settings
    weights: str | None = None
    device: str = "cpu"
    precision: str = "float32"       # "bfloat16" where the hardware has it natively (clickpose_core.model.kernels)
    model_version: str | None = None
    chunk: int = 200
    selection: Selection = Selection()
    ray: str | None = None
    actors: int | None = None
    report_path: str | None = None
    progress: bool = True


class PrelabelError(RuntimeError):
    """The run cannot start or cannot go on; the message says why (and whether re-running resumes)."""


def check_model_version(mv: str) -> str:
    # Label Studio lists a task's versions comma-joined with quotes removed: such characters
    # would make the exact "has a prediction of MV" check impossible.
    if not mv or any(c in mv for c in ',"') or len(mv) > 200:
        raise PrelabelError(f"--model-version {mv!r}: use 1-200 characters without commas or quotes")
    return mv


def run(config: PrelabelConfig) -> Report:
    """One prelabel run; raises PrelabelError / LabelStudioError / LabelConfigError before or instead of work."""
    from clickpose_core.predictor import Predictor

    started = time.perf_counter()
    credentials = Credentials(config.url, config.api_key)
    project = LabelStudioProject(config.url, credentials, config.project)
    info = project.info()
    # Under Ray the actors run the model; the driver loads the weights on the CPU only for the
    # config and the model version, so both are the ones the backend reports.
    predictor = Predictor.from_checkpoint(config.weights, device="cpu" if config.ray else config.device,
                                          cache_size=1, precision="float32" if config.ray else config.precision)
    mv = check_model_version(config.model_version or predictor.model_version)
    served = cached_parse(info.label_config, tuple(predictor.config.keypoint_names), config.settings.score_threshold)
    if info.retrieves_on_listing:
        logger.warning("project %s retrieves predictions when tasks are listed "
                       "(evaluate_predictions_automatically): listing may call its ML backend", info.id)
    report = Report(project=info.id, model_version=mv)
    tasks = snapshot(project, mv, config.selection, report)
    logger.info("%d tasks to pre-label, %d skipped", len(tasks), len(report.skipped))
    model = TaskPredictor(predictor, served, mv, info.id)
    progress = Progress(len(tasks), enabled=config.progress)
    try:
        _infer_and_write(config, project, credentials, model, info.label_config, tasks, report, progress)
        if (report.done or report.had_version) and not report.interrupted:
            # the editor shows the predictions of the project's version (also after a resumed run
            # whose predictions were all written before it was stopped)
            project.set_model_version(mv)
    except Exception as exc:
        report.error = str(exc)
        raise
    finally:
        progress.close()
        report.seconds = time.perf_counter() - started
        if config.report_path:
            with open(config.report_path, "w") as f:
                json.dump(report.to_json(), f, indent=1)
    return report


def _infer_and_write(config: PrelabelConfig, project: LabelStudioProject, credentials: Credentials,
                     model: TaskPredictor, label_config: str, tasks: list[dict], report: Report,
                     progress: Progress) -> None:
    source = dataclasses.replace(config.settings.image_source(), label_studio_url=project.url, token="")
    writer = ChunkWriter(project, model.model_version)
    if config.ray:
        from .prelabel_ray import RayPlan, ray_results

        plan = RayPlan(address=config.ray, actors=config.actors, weights=config.weights, device=config.device,
                       precision=config.precision, label_config=label_config, score_threshold=config.settings.score_threshold,
                       model_version=model.model_version, project=project.id, url=project.url,
                       api_key=config.api_key, image_source=source)
        run_chunks(ray_results(tasks, plan), writer, report, config.chunk, progress)
        return
    run_chunks(serial_results(tasks, model, Loaders(source, credentials)), writer, report, config.chunk, progress)
