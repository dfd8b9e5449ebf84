"""Who may use the model when: interactive first, bounded memory, batch requests that finish in time.

One process serves annotators (interactive refinements: tens of milliseconds each) and
pre-annotation (a full forward: seconds per image on a CPU). The rules, in order of importance:

* **A refinement never waits for a pre-annotation forward.** The two lanes do not share a lock:
  refinements take the interactive lane only (one at a time, they are short), an annotator's
  first call on a task runs its full forward beside them (one at a time), pre-annotation
  forwards run on the batch lane's one thread. The model is stateless during a forward, so the
  two may run at once; a pre-annotation forward also waits to *start* while an interactive call
  is in flight, and the batch thread runs at a lower CPU priority (nice +10, inherited by its
  OpenMP workers), so a forward already running gives the cores to a refinement.
* **Pre-annotation cannot evict annotators' sessions**: its sessions go to the predictor's
  separate prefetch tier (CLICKPOSE_PREFETCH_CACHE_SIZE), the annotators' to the active tier
  (CLICKPOSE_CACHE_SIZE); the click store holds interactive tasks only.
* **Decoded pixels in flight are capped per lane** (MAX_PIXELS_IN_FLIGHT): a request waits for
  room before decoding, so four near-limit images cannot decode at once.
* **A batch request finishes inside Label Studio's timeout**: `Admission` admits as many tasks
  as the measured cost per image fits in PREDICT_TIME_BUDGET (at most MAX_TASKS_PER_REQUEST)
  and stops early when the budget runs out; the other tasks are answered "not predicted".
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")
BATCH_NICE = 10


class Busy(RuntimeError):
    """The backend could not get room for this request in time (HTTP 503, retry later)."""


class Lanes:
    """Admission to the model for the interactive lane and the batch lane.

    yield_wait: the longest a pre-annotation forward waits for interactive calls to finish
    before it starts anyway (so a stream of clicks slows pre-annotation down, never stops it).
    """

    def __init__(self, yield_wait: float = 2.0) -> None:
        self.yield_wait = yield_wait
        self._interactive = threading.Lock()
        self._first = threading.Lock()
        self._cond = threading.Condition()
        self._interactive_in_flight = 0
        # Started on first use, so no thread exists yet when gunicorn --preload forks.
        self._batch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickpose-batch",
                                         initializer=_lower_priority)

    @contextmanager
    def interactive(self) -> Iterator[None]:
        """A refinement (and the click bookkeeping): short, one at a time."""
        with self._in_flight(), self._interactive:
            yield

    @contextmanager
    def first_forward(self) -> Iterator[None]:
        """An annotator's first call on a task: the full model once, beside the refinements."""
        with self._in_flight(), self._first:
            yield

    @contextmanager
    def _in_flight(self) -> Iterator[None]:
        with self._cond:
            self._interactive_in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._interactive_in_flight -= 1
                self._cond.notify_all()

    def run_batch(self, fn: Callable[[], T]) -> T:
        """Run one pre-annotation forward on the batch thread (one at a time, in arrival order)."""
        def start_when_quiet() -> T:
            with self._cond:
                self._cond.wait_for(lambda: self._interactive_in_flight == 0, timeout=self.yield_wait)
            return fn()
        return self._batch.submit(start_when_quiet).result()


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BATCH_NICE)   # this thread only (Linux)
    except (OSError, AttributeError):
        logger.info("cannot lower the batch thread's CPU priority on this system; interactive calls share "
                    "the cores equally with a running pre-annotation forward")


class PixelBudget:
    """A weighted semaphore over decoded pixels; one request larger than the budget runs alone."""

    def __init__(self, capacity: int, wait: float = 60.0) -> None:
        self.capacity, self.wait = capacity, wait
        self._used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = min(max(int(pixels), 0), self.capacity)
        with self._cond:
            if not self._cond.wait_for(lambda: self._used + need <= self.capacity, timeout=self.wait):
                raise Busy(f"waited {self.wait:g} s for room to decode {pixels} pixels (MAX_PIXELS_IN_FLIGHT "
                           f"{self.capacity}); retry later")
            self._used += need
        try:
            yield
        finally:
            with self._cond:
                self._used -= need
                self._cond.notify_all()

    @property
    def used(self) -> int:
        return self._used


class Admission:
    """How many pre-annotation tasks one request may take, from the measured seconds per image.

    The first requests use `prior` seconds per image (a CPU with the R50 weights needs ~3.4 s);
    each finished image updates an exponential moving average.
    """

    def __init__(self, budget: float, max_tasks: int, prior: float = 5.0, alpha: float = 0.3) -> None:
        self.budget, self.max_tasks, self.alpha = budget, max_tasks, alpha
        self.seconds_per_image = prior
        self._lock = threading.Lock()

    def admit(self, n_tasks: int) -> int:
        fits = max(1, math.floor(self.budget / max(self.seconds_per_image, 1e-3)))
        return min(n_tasks, self.max_tasks, fits)

    def observe(self, seconds: float, images: int) -> None:
        if images <= 0:
            return
        with self._lock:
            per = seconds / images
            self.seconds_per_image += self.alpha * (per - self.seconds_per_image)

    def time_left(self, started: float) -> float:
        return self.budget - (time.monotonic() - started)
