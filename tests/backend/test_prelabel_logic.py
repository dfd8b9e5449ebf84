"""The prelabel job's logic without a server: exactly-once chunk writes against a fake Label
Studio that can fail before or after committing, the snapshot, id ranges, token kinds, and the
export's grouping of keypoints into people."""
from __future__ import annotations

import base64
import json
import time

import pytest

from backend.control_models import ImageFrame
from clickpose_core.config import ClickPoseConfig
from backend.export import group_people
from backend.label_config import parse_label_config
from backend.ls_client import AmbiguousWrite, Credentials, LabelStudioError, listed_versions, parse_id_ranges
from backend.prelabel import DROPPED, ChunkWriter, Progress, Report, Selection, run_chunks, snapshot
from backend.task_inference import TaskResult

from backend_fixtures import payload

MV = "clickpose-test@0123"


class FakeProject:
    """Predictions stored per task; `script` says what each import call does:
    "ok", "commit-then-timeout" (stored, then no answer), "timeout" (not stored), "drop-first"
    (stores all but the first), "refuse" (HTTP 400, nothing stored), "auth" (HTTP 401)."""

    id = 7

    def __init__(self, script=(), read_failures=0):
        self.stored: dict[int, list[str]] = {}
        self.script = list(script)
        self.imports: list[list[int]] = []
        self.read_failures = read_failures

    def version_counts(self, ids, mv):
        if self.read_failures:
            self.read_failures -= 1
            raise LabelStudioError("listing tasks: cannot reach Label Studio")
        return {i: self.stored.get(i, []).count(mv) for i in ids}

    def import_predictions(self, predictions):
        self.imports.append([p["task"] for p in predictions])
        action = self.script.pop(0) if self.script else "ok"
        if action == "refuse":
            raise LabelStudioError("importing predictions: HTTP 400", 400)
        if action == "auth":
            raise LabelStudioError("importing predictions: 401", 401)
        if action == "timeout":
            raise AmbiguousWrite("no answer (ReadTimeout)")
        kept = predictions[1:] if action == "drop-first" else predictions
        for p in kept:
            self.stored.setdefault(p["task"], []).append(p["model_version"])
        if action == "commit-then-timeout":
            raise AmbiguousWrite("no answer (ReadTimeout)")
        return len(kept)


def chunk(ids):
    return {i: {"result": [], "score": 0.5, "model_version": MV} for i in ids}


def writer(project):
    return ChunkWriter(project, MV, attempts=4, sleep=lambda s: None)


def test_a_write_committed_but_unanswered_is_not_sent_again():
    project = FakeProject(["commit-then-timeout"])
    out = writer(project).write(chunk([1, 2, 3]))
    assert sorted(out.done) == [1, 2, 3] and not out.failed and not out.duplicates
    assert project.imports == [[1, 2, 3]], "the re-read found them stored: no second POST"
    assert all(project.stored[i] == [MV] for i in (1, 2, 3))


def test_a_write_lost_before_commit_is_sent_again_once():
    project = FakeProject(["timeout", "ok"])
    out = writer(project).write(chunk([1, 2]))
    assert sorted(out.done) == [1, 2]
    assert project.imports == [[1, 2], [1, 2]]
    assert all(project.stored[i] == [MV] for i in (1, 2))


def test_only_tasks_without_the_version_are_sent():
    project = FakeProject()
    project.stored = {2: [MV], 3: ["other"]}
    out = writer(project).write(chunk([1, 2, 3]))
    assert project.imports == [[1, 3]] and sorted(out.done) == [1, 2, 3]
    assert project.stored[3] == ["other", MV]


def test_a_prediction_label_studio_dropped_is_reported_not_resent():
    project = FakeProject(["drop-first"])
    out = writer(project).write(chunk([4, 5, 6]))
    assert sorted(out.done) == [5, 6] and out.failed == [(4, DROPPED)]
    assert project.imports == [[4, 5, 6]]


def test_a_refused_chunk_fails_its_tasks_with_the_reason_and_the_run_goes_on():
    project = FakeProject(["refuse"])
    out = writer(project).write(chunk([1, 2]))
    assert out.done == [] and [f[0] for f in out.failed] == [1, 2] and "HTTP 400" in out.failed[0][1]


def test_an_auth_error_stops_the_run():
    with pytest.raises(LabelStudioError, match="401"):
        writer(FakeProject(["auth"])).write(chunk([1]))


def test_reads_are_retried_and_the_attempts_are_bounded():
    project = FakeProject(read_failures=2)
    assert sorted(writer(project).write(chunk([1])).done) == [1]
    project = FakeProject(["timeout"] * 10)
    with pytest.raises(LabelStudioError, match="failed 4 times.*run the same command again"):
        writer(project).write(chunk([1]))
    assert len(project.imports) == 4 and 1 not in project.stored


def test_existing_duplicates_are_reported():
    project = FakeProject()
    project.stored = {1: [MV, MV]}
    out = writer(project).write(chunk([1, 2]))
    assert out.duplicates == [1] and sorted(out.done) == [1, 2] and project.imports == [[2]]


def test_run_chunks_writes_full_chunks_and_the_rest_and_reports_failures():
    project = FakeProject()
    report = Report(project=7, model_version=MV)
    results = [TaskResult(i, {"result": [], "score": 0.0, "model_version": MV}) for i in range(1, 6)]
    results.insert(2, TaskResult(99, None, "the task image cannot be decoded"))
    run_chunks(results, writer(project), report, chunk=2, progress=Progress(6, enabled=False))
    assert project.imports == [[1, 2], [3, 4], [5]]
    assert sorted(report.done) == [1, 2, 3, 4, 5]
    assert report.failed == [{"id": 99, "reason": "the task image cannot be decoded"}]


def test_an_interrupt_writes_complete_chunks_and_drops_the_partial_one():
    project = FakeProject()
    report = Report(project=7, model_version=MV)

    def results():
        for i in range(1, 4):
            yield TaskResult(i, {"result": [], "score": 0.0, "model_version": MV})
        raise KeyboardInterrupt

    run_chunks(results(), writer(project), report, chunk=2, progress=Progress(4, enabled=False))
    assert report.interrupted and project.imports == [[1, 2]] and sorted(report.done) == [1, 2]


class ListingProject:
    id = 7

    def __init__(self, pending, done, view=()):
        self._pending, self._done, self._view = pending, done, set(view)

    def partition(self, mv):
        return [{"id": i, "data": {"image": f"/data/{i}.png"}} for i in self._pending], list(self._done)

    def view_task_ids(self, view):
        return self._view


def test_snapshot_selects_by_ids_view_and_limit():
    project = ListingProject(pending=[1, 2, 3, 4], done=[5])
    report = Report(project=7, model_version=MV)
    assert [t["id"] for t in snapshot(project, MV, Selection(), report)] == [1, 2, 3, 4]
    assert report.skipped == [{"id": 5, "reason": f"already has a prediction of {MV}"}]
    report = Report(project=7, model_version=MV)
    tasks = snapshot(project, MV, Selection(task_ids=(2, 5, 8)), report)
    assert [t["id"] for t in tasks] == [2]
    assert {s["id"]: s["reason"] for s in report.skipped} == {5: f"already has a prediction of {MV}",
                                                             8: "not a task of project 7"}
    report = Report(project=7, model_version=MV)
    assert [t["id"] for t in snapshot(ListingProject([1, 2, 3], [], view=[2, 3]), MV, Selection(view=1),
                                      report)] == [2, 3]
    report = Report(project=7, model_version=MV)
    assert [t["id"] for t in snapshot(project, MV, Selection(limit=2), report)] == [1, 2]
    assert {s["id"] for s in report.skipped} == {3, 4, 5} and report.selected == 2


def test_id_ranges():
    assert parse_id_ranges("1,5,9-12, 3") == [1, 3, 5, 9, 10, 11, 12]
    for bad in ("a", "5-2", "0", ",", "1-x"):
        with pytest.raises(ValueError, match="--tasks"):
            parse_id_ranges(bad)


def test_listed_versions_are_exact_tokens_and_a_cut_list_is_unsure():
    assert listed_versions({"predictions_model_versions": "a-1, b"}) == {"a-1", "b"}
    assert listed_versions({"predictions_model_versions": ""}) == set()
    cut = ", ".join(f"version-{i:04d}" for i in range(60))[:500]
    versions = listed_versions({"predictions_model_versions": cut})
    assert "version-0000" in versions and not any(len(v) < len("version-0000") for v in versions)


def _jwt(claims: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'HS256'})}.{enc(claims)}.c2ln"


def test_token_kinds():
    assert Credentials("http://127.0.0.1:1", "0123abcd" * 5).header == "Token " + "0123abcd" * 5
    access = _jwt({"token_type": "access", "exp": time.time() + 600})
    assert Credentials("http://127.0.0.1:1", access).header == f"Bearer {access}"
    assert Credentials("http://127.0.0.1:1", _jwt({"token_type": "refresh", "exp": 1e10})).kind == "pat"
    with pytest.raises(LabelStudioError, match="API key"):
        Credentials("http://127.0.0.1:1", "  ")
    with pytest.raises(LabelStudioError, match="refresh the access token"):   # nothing listens on port 1
        Credentials("http://127.0.0.1:1", _jwt({"token_type": "refresh", "exp": 1e10})).token


SERVED = parse_label_config(payload("02_setup")["schema"], ClickPoseConfig().keypoint_names, 0.3)
FRAME = ImageFrame(width=200, height=100)


def box(rid, x, y, w, h):
    return {"id": rid, "type": "rectanglelabels", "from_name": SERVED.box.from_name, "to_name": "image",
            "value": {"x": x, "y": y, "width": w, "height": h, "rectanglelabels": [SERVED.box.label]}}


def point(rid, label, x, y, parent=None):
    region = {"id": rid, "type": "keypointlabels", "from_name": SERVED.keypoints.from_name, "to_name": "image",
              "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}
    if parent:
        region["parentID"] = parent
    return region


def test_people_are_kept_apart_by_parent_then_by_box():
    result = [box("a", 0, 0, 40, 100), box("b", 50, 0, 40, 100),
              point("a1", "nose", 10, 10, "a"), point("b1", "nose", 60, 10, "b"),
              point("o1", "left_wrist", 70, 50),      # no parent, inside b only
              point("o2", "right_wrist", 95, 50),     # outside every box: reported
              point("a2", "nose", 12, 12, "a")]       # a second nose for a: reported
    people, problems = group_people(result, SERVED, FRAME)
    nose, lwrist = SERVED.keypoints.joint_of("nose"), SERVED.keypoints.joint_of("left_wrist")
    assert len(people) == 2
    a, b = people
    assert a.box == (0.0, 0.0, 80.0, 100.0) and a.joints == {nose: (20.0, 10.0)}
    assert b.joints == {nose: (120.0, 10.0), lwrist: (140.0, 50.0)}
    assert len(problems) == 2 and "o2" in " ".join(problems) and "already has a nose" in " ".join(problems)
    coco = b.coco(17)
    assert coco["num_keypoints"] == 2 and coco["bbox"] == [100.0, 0.0, 80.0, 100.0] and coco["area"] == 8000.0
    assert coco["keypoints"][3 * nose:3 * nose + 3] == [120.0, 10.0, 2] and coco["keypoints"][3:6] == [0.0, 0.0, 0]


def test_an_orphan_goes_to_the_smallest_box_that_holds_it():
    result = [box("big", 0, 0, 100, 100), box("small", 40, 40, 20, 20), point("o", "nose", 50, 50)]
    people, problems = group_people(result, SERVED, FRAME)
    assert not problems and [len(p.joints) for p in people] == [0, 1]


def test_image_loaders_follow_the_renewed_access_token():
    from backend.images import ImageSource
    from backend.task_inference import Loaders

    class Tokens:
        token = "access-1"

    tokens = Tokens()
    loaders = Loaders(ImageSource(label_studio_url="http://127.0.0.1:1"), tokens)
    first = loaders.current()
    assert first.token == "access-1" and loaders.current() is first
    tokens.token = "access-2"
    second = loaders.current()
    assert second is not first and second.token == "access-2" and second.hostname == "http://127.0.0.1:1"


def test_precision_flag_reaches_the_run_config(monkeypatch):
    import backend.prelabel as prelabel
    from backend.cli import build_parser, main

    args = build_parser().parse_args(["prelabel", "--project", "3", "--precision", "bfloat16"])
    assert args.precision == "bfloat16"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prelabel", "--project", "3", "--precision", "float16"])
    seen = []

    def fake_run(config):
        seen.append(config)
        raise ValueError("stop here")   # the CLI turns our errors into exit status 2

    monkeypatch.setattr(prelabel, "run", fake_run)
    assert main(["prelabel", "--url", "http://127.0.0.1:9", "--api-key", "k", "--project", "3",
                 "--precision", "bfloat16"]) == 2
    assert seen[0].precision == "bfloat16" and seen[0].project == 3
