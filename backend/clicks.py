"""Which smart keypoints are the annotator's clicks, and which person and joint each corrects.

What the editor sends (README "Label Studio backend" and ../shared/label-studio, observed in a real browser): a call fires when a smart
point is placed, dragged, relabeled or deleted, and `context.result` holds every keypoint of the
annotation that has the same label as that point: smart points (`is_positive` present, random
id) and any other keypoint with that label (predicted or accepted ones). So one call only tells
the truth about one label; the clicks of the other labels are remembered per task here:

* a click is a smart point with `is_positive: true`; Click-Pose has no negative clicks, so
  Alt+click points are ignored;
* a dragged point keeps its id, so its person stays and only its position changes;
* a relabeled point keeps its id and moves to its new joint;
* a point missing from its label's group was deleted.

A new click is given to the person whose joint is nearest among the people whose box holds it
(people on screen first), preferring people whose joint is not clicked yet; then it stays there.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from clickpose_core.types import Click, Person

from .control_models import ImageFrame, percent_to_pixels
from .label_config import KeypointControl


class ContextError(ValueError):
    """`context` of an interactive request is malformed."""


@dataclass(frozen=True)
class SmartPoint:
    """A smart keypoint as the editor sent it, in original-image pixels."""

    id: str
    joint: int
    x: float
    y: float
    positive: bool
    pct: tuple[float, float] = (0.0, 0.0)   # as sent: the reply echoes it, free of float round trips


@dataclass
class StoredClick:
    id: str
    joint: int
    x: float
    y: float
    pct: tuple[float, float] = (0.0, 0.0)
    person: int | None = None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContextError(f"{what} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:   # an integer beyond float range
        number = math.inf
    if not math.isfinite(number):
        raise ContextError(f"{what} must be a finite number, got {str(value)[:40]}")
    return number


def read_group(regions: Any, control: KeypointControl, frame: ImageFrame) -> tuple[set[int], list[SmartPoint]]:
    """Parse `context.result`: the joints whose group was sent, and the smart points in it."""
    if not isinstance(regions, list):
        raise ContextError("context.result must be a list of regions")
    joints: set[int] = set()
    points: list[SmartPoint] = []
    for i, region in enumerate(regions):
        if not isinstance(region, dict):
            raise ContextError(f"context.result[{i}] must be an object")
        if region.get("from_name") != control.from_name or region.get("type") != "keypointlabels":
            continue  # other tools' regions are not ours to interpret
        value = region.get("value")
        if not isinstance(value, dict):
            raise ContextError(f"context.result[{i}].value must be an object")
        labels = value.get("keypointlabels") or value.get("labels") or []
        if not isinstance(labels, list) or not labels:
            continue
        joint = control.joint_of(str(labels[0]))  # the editor groups by the first label
        if joint is None:
            continue
        joints.add(joint)
        if "is_positive" not in region:
            continue  # predicted or accepted keypoint: context, not a click
        x_pct = _number(value.get("x"), f"context.result[{i}].value.x")
        y_pct = _number(value.get("y"), f"context.result[{i}].value.y")
        if not (-1.0 <= x_pct <= 101.0 and -1.0 <= y_pct <= 101.0):
            raise ContextError(f"context.result[{i}] lies outside the image ({x_pct:.1f}%, {y_pct:.1f}%)")
        rid = region.get("id")
        if not isinstance(rid, str) or not rid:
            raise ContextError(f"context.result[{i}].id must be a non-empty string")
        x, y = percent_to_pixels({"x": min(max(x_pct, 0.0), 100.0), "y": min(max(y_pct, 0.0), 100.0)}, frame)
        points.append(SmartPoint(rid, joint, x, y, bool(region.get("is_positive")),
                                 (min(max(x_pct, 0.0), 100.0), min(max(y_pct, 0.0), 100.0))))
    return joints, points


def smart_points_of_draft(task: dict, control: KeypointControl, frame: ImageFrame) -> list[SmartPoint]:
    """Smart points saved in the task's newest draft (the editor autosaves its whole state).

    Used only when this process has no clicks for the task (another worker served the earlier
    calls, or it restarted); it may lag one action behind the editor.
    """
    drafts = task.get("drafts") if isinstance(task, dict) else None
    if not isinstance(drafts, list) or not drafts:
        return []
    newest = max((d for d in drafts if isinstance(d, dict)), key=lambda d: str(d.get("updated_at", "")),
                 default=None)
    if newest is None:
        return []
    try:
        return read_group(newest.get("result") or [], control, frame)[1]
    except ContextError:
        return []  # a stale draft must never fail the live request


class TaskClicks:
    """The clicks of one task, across interactive calls (at most `max_clicks` smart points)."""

    def __init__(self, max_clicks: int = 256) -> None:
        self.max_clicks = max_clicks
        self.points: "OrderedDict[str, StoredClick]" = OrderedDict()
        self.frame: ImageFrame | None = None   # size of the image the clicks refer to
        self.latest_pct: dict[tuple[int, int], tuple[float, float]] = {}   # (person, joint) -> % as clicked

    def seed(self, points: Iterable[SmartPoint]) -> None:
        for p in points:
            if p.positive and p.id not in self.points and len(self.points) < self.max_clicks:
                self.points[p.id] = StoredClick(p.id, p.joint, p.x, p.y, p.pct)

    def update(self, group_joints: set[int], points: Sequence[SmartPoint]) -> None:
        """Apply one editor call: `points` is the complete set of smart points of `group_joints`."""
        sent = {p.id for p in points if p.positive}
        for cid in [c.id for c in self.points.values() if c.joint in group_joints and c.id not in sent]:
            del self.points[cid]          # deleted (or turned negative) in the editor
        for p in points:
            if not p.positive:
                self.points.pop(p.id, None)
                continue
            old = self.points.get(p.id)
            if old is None:
                if len(self.points) >= self.max_clicks:
                    raise ContextError(f"the task already has {len(self.points)} smart points, the most "
                                       "MAX_CLICKS_PER_TASK allows; delete some before adding more")
                self.points[p.id] = StoredClick(p.id, p.joint, p.x, p.y, p.pct)
            elif (old.x, old.y, old.joint) != (p.x, p.y, p.joint):
                # Dragged or relabeled: same person; it is now the newest action.
                old.x, old.y, old.joint, old.pct = p.x, p.y, p.joint, p.pct
                self.points.move_to_end(p.id)

    def assign(self, persons: Sequence[Person], shown_rows: set[int]) -> list[Click]:
        """Give every unassigned click a person; return one `Click` per (person, joint)."""
        rows = {p.index for p in persons}
        for c in self.points.values():
            if c.person is not None and c.person not in rows:
                c.person = None            # the session was rebuilt with other rows
        claimed = {(c.person, c.joint) for c in self.points.values() if c.person is not None}
        for c in self.points.values():
            if c.person is None:   # one pass, `claimed` kept up to date: linear in the clicks
                c.person = choose_person(c.x, c.y, c.joint, persons, shown_rows, claimed)
                claimed.add((c.person, c.joint))
        # Two clicks on the same joint of the same person: the newest wins.
        latest: dict[tuple[int, int], StoredClick] = {}
        for c in self.points.values():
            latest[(c.person, c.joint)] = c
        self.latest_pct = {k: c.pct for k, c in latest.items()}
        return [Click(person=c.person, joint=c.joint, x=c.x, y=c.y) for c in latest.values()]


def choose_person(x: float, y: float, joint: int, persons: Sequence[Person], shown_rows: set[int],
                  claimed: set[tuple[int, int]]) -> int:
    """The session row a new click at (x, y) on `joint` corrects."""
    if not persons:
        raise ValueError("no person rows in the session")
    free = [p for p in persons if (p.index, joint) not in claimed] or list(persons)

    def inside(p: Person, margin: float = 0.15) -> bool:
        x0, y0, x1, y1 = (float(v) for v in p.box)
        mx, my = margin * (x1 - x0), margin * (y1 - y0)
        return x0 - mx <= x <= x1 + mx and y0 - my <= y <= y1 + my

    def dist(p: Person) -> float:
        kx, ky = p.keypoints[joint]
        return float(np.hypot(kx - x, ky - y))

    for pool in ([p for p in free if p.index in shown_rows and inside(p)],
                 [p for p in free if inside(p)],
                 free):
        if pool:
            return min(pool, key=dist).index
    raise AssertionError("unreachable: free is never empty")


class ClickStore:
    """Per-process LRU of `TaskClicks` by session key. Callers hold the interactive lane."""

    def __init__(self, capacity: int, max_clicks: int = 256) -> None:
        self.capacity, self.max_clicks = capacity, max_clicks
        self._tasks: "OrderedDict[str, TaskClicks]" = OrderedDict()

    def get(self, key: str) -> TaskClicks | None:
        tc = self._tasks.get(key)
        if tc is not None:
            self._tasks.move_to_end(key)
        return tc

    def create(self, key: str) -> TaskClicks:
        tc = self._tasks[key] = TaskClicks(self.max_clicks)
        self._tasks.move_to_end(key)
        while len(self._tasks) > self.capacity:
            self._tasks.popitem(last=False)
        return tc

    def drop(self, key: str) -> None:
        self._tasks.pop(key, None)
