"""Pre-annotations of Label Studio tasks outside the server: guarded image loading + the full model.

`TaskPredictor` turns tasks into the prediction dicts the backend's pre-annotation produces for
the same image (same label mapping, regions, parentID and score threshold: `ServedConfig` and
`PersonRegions`). It keeps no interactive sessions: every image's encoder state is dropped right
after its forward pass, so memory does not grow with the number of tasks.

`serial_results` runs it in this process with a small thread pool that downloads and decodes
the next images while the model works on the current one.
"""
from __future__ import annotations

import dataclasses
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from .control_models import ImageFrame, PersonRegions
from .images import ImageError, ImageLoader, ImageSource
from .label_config import ServedConfig
from .ls_client import Credentials
from .model import TaskError, TaskRef


@dataclass(frozen=True)
class TaskResult:
    """One task's outcome: a prediction dict (without `task`), or the reason there is none.

    model_ready_at: time.time() when the model replica that made it had loaded (Ray actors), for
    the throughput figure; None in this process.
    """

    task_id: int
    prediction: dict | None
    error: str | None = None
    model_ready_at: float | None = None


class Loaders:
    """An `ImageLoader` for the current token: a new one whenever a PAT's access token is renewed."""

    def __init__(self, source: ImageSource, credentials: Credentials) -> None:
        self.source, self.credentials = source, credentials
        self._loader: ImageLoader | None = None
        self._lock = threading.Lock()

    def current(self) -> ImageLoader:
        token = self.credentials.token
        with self._lock:
            if self._loader is None or self._loader.token != token:
                self._loader = ImageLoader(dataclasses.replace(self.source, token=token))
            return self._loader


class TaskPredictor:
    """Label Studio tasks -> pre-annotation dicts with one `Predictor` (`clickpose_core`)."""

    def __init__(self, predictor, served: ServedConfig, model_version: str, project: int) -> None:
        self.predictor = predictor
        self.served = served
        self.model_version = model_version
        self.project = str(project)
        self.regions = PersonRegions(served.keypoints, served.box)

    @property
    def batch_size(self) -> int:
        return self.predictor.forward_batch_size

    def ref(self, task: dict) -> TaskRef:
        return TaskRef.of(task, self.served.keypoints.value_key, self.project)

    def load(self, task: dict, loaders: Loaders) -> np.ndarray | TaskResult:
        """The task's image, or a failed `TaskResult` saying why not."""
        try:
            ref = self.ref(task)
            return loaders.current().load(ref.url, ref.id)
        except (TaskError, ImageError) as exc:
            return TaskResult(int(task["id"]), None, str(exc))

    def predict(self, tasks: Sequence[dict], images: Sequence[np.ndarray]) -> list[TaskResult]:
        """One forward batch; the backend's `_pre_annotate` does the same per image."""
        refs = [self.ref(t) for t in tasks]
        keys = [r.key for r in refs]
        try:
            batch = self.predictor.predict_batch(keys, images)
        finally:
            for key in keys:
                self.predictor.forget(key)   # no refinement follows: free the encoder state now
        out = []
        for ref, image, persons in zip(refs, images, batch):
            frame = ImageFrame(width=image.shape[1], height=image.shape[0])
            out.append(TaskResult(int(ref.id), self.regions.pre_annotation(persons, frame, self.model_version)))
        return out


def serial_results(tasks: Iterable[dict], model: TaskPredictor, loaders: Loaders,
                   prefetch: int = 4) -> Iterator[TaskResult]:
    """Results in task order; up to `2 * prefetch` images are fetched ahead of the model."""
    with ThreadPoolExecutor(prefetch, thread_name_prefix="clickpose-fetch") as pool:
        ahead: deque[tuple[dict, Future]] = deque()
        source = iter(tasks)

        def top_up() -> None:
            while len(ahead) < 2 * prefetch:
                task = next(source, None)
                if task is None:
                    return
                ahead.append((task, pool.submit(model.load, task, loaders)))

        try:
            top_up()
            batch: list[tuple[dict, np.ndarray]] = []
            while ahead or batch:
                if ahead:
                    task, future = ahead.popleft()
                    top_up()
                    loaded = future.result()
                    if isinstance(loaded, TaskResult):
                        yield loaded
                    else:
                        batch.append((task, loaded))
                if batch and (len(batch) >= model.batch_size or not ahead):
                    yield from model.predict([t for t, _ in batch], [i for _, i in batch])
                    batch = []
        finally:
            for _, future in ahead:
                future.cancel()
