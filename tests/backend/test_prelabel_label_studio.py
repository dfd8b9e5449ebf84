"""`clickpose-ls prelabel` and `export` against a real Label Studio 1.23 on 127.0.0.1 (tiny model).

Exactly one prediction per task, a second run that creates none, a run killed with SIGKILL after
its first chunk then resumed, a broken image reported while the others succeed, legacy token and
personal access token (with access-token refresh), `--ray` equal to the serial run, the same
predictions as the backend's pre-annotation, and a COCO export that keeps people apart.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from PIL import Image
from pycocotools.coco import COCO

from backend.app import create_app
from backend.ls_client import Credentials
from backend.settings import Settings

from backend_fixtures import payload, person_image
from servers import LS_TOKEN, REPO, start_label_studio, stop

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = payload("02_setup")["schema"]


@pytest.fixture(scope="module")
def ls(tmp_path_factory):
    server = start_label_studio(tmp_path_factory.mktemp("ls-prelabel"))
    try:
        yield server
    finally:
        stop(server.proc)


def api(ls, method: str, path: str, token: str = LS_TOKEN, **kw) -> requests.Response:
    r = requests.request(method, ls.url + path, headers={"Authorization": f"Token {token}"}, timeout=120, **kw)
    assert r.status_code < 400, f"{method} {path}: {r.status_code} {r.text[:500]}"
    return r


def new_project(ls, n: int, broken: int = 0, config: str = CONFIG) -> tuple[int, list[int]]:
    project = api(ls, "POST", "/api/projects", json={"title": "prelabel", "label_config": config}).json()["id"]
    files = {f"f{i}": (f"person_{i}.png", io.BytesIO(person_image(320 + 16 * (i % 4), 240, fmt="PNG")), "image/png")
             for i in range(n)}
    ids = api(ls, "POST", f"/api/projects/{project}/import?return_task_ids=true", files=files).json()["task_ids"]
    if broken:
        bad = [{"image": f"/data/upload/{project}/missing-{i}.png"} for i in range(broken)]
        ids += api(ls, "POST", f"/api/projects/{project}/import?return_task_ids=true", json=bad).json()["task_ids"]
    return project, sorted(ids)


def predictions(ls, project: int) -> dict[int, list[dict]]:
    """Task id -> its predictions, read through the project's task list."""
    out, page = {}, 1
    while True:
        r = requests.get(ls.url + "/api/tasks/", headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=60,
                         params={"project": project, "fields": "all", "page": page, "page_size": 100})
        if r.status_code == 404:
            return out
        tasks = r.json()["tasks"]
        out.update({t["id"]: t["predictions"] for t in tasks})
        if len(tasks) < 100:
            return out
        page += 1


def prelabel(ls, project: int, *args: str, key: str = LS_TOKEN, timeout: float = 300,
             background: bool = False, weights: str):
    cmd = [sys.executable, "-m", "backend.cli", "prelabel", "--url", ls.url, "--project", str(project),
           "--weights", weights, "--no-progress", *args]
    env = {**os.environ, "LABEL_STUDIO_API_KEY": key, "MODEL_SCORE_THRESHOLD": "0"}
    if background:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def model_version(weights: str) -> str:
    from clickpose_core.weights import describe_weights

    return describe_weights(weights).model_version


def normalised(prediction: dict) -> list[tuple]:
    """A prediction without its random region-id token, comparable across runs."""
    def strip(rid):
        return rid.split("-", 1)[1] if rid else rid
    rows = []
    for r in prediction["result"]:
        value = r["value"]
        rows.append((strip(r["id"]), strip(r.get("parentID")), r["type"], r["from_name"],
                     tuple(value.get("keypointlabels") or value.get("rectanglelabels")),
                     tuple(float(value[k]) for k in ("x", "y", "width", "height") if k in value),
                     float(r["score"]), r["original_width"], r["original_height"]))
    return sorted(rows, key=lambda row: row[:5])


def assert_same_prediction(a: dict, b: dict) -> None:
    """Same regions, ids (without the random token), labels and sizes; coordinates and scores equal
    to float noise (1e-4 % of the image, 1e-5 in score: runs with other thread counts sum in
    another order)."""
    rows_a, rows_b = normalised(a), normalised(b)
    assert [r[:5] + r[7:] for r in rows_a] == [r[:5] + r[7:] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        assert ra[5] == pytest.approx(rb[5], abs=1e-4), ra[:5]
        assert ra[6] == pytest.approx(rb[6], abs=1e-5), ra[:5]


def test_every_task_gets_exactly_one_prediction_and_a_second_run_creates_none(ls, tiny_checkpoint, tmp_path):
    project, ids = new_project(ls, 5, broken=1)
    good, bad = ids[:5], ids[5]
    report_file = tmp_path / "report.json"
    run = prelabel(ls, project, "--chunk", "2", "--report", str(report_file), weights=tiny_checkpoint)
    assert run.returncode == 1, run.stdout + run.stderr   # one task failed
    report = json.loads(report_file.read_text())
    mv = model_version(tiny_checkpoint)
    assert report["model_version"] == mv and sorted(report["done"]) == good
    assert [f["id"] for f in report["failed"]] == [bad] and "answered HTTP 40" in report["failed"][0]["reason"]
    assert f"task {bad}: " in run.stderr
    preds = predictions(ls, project)
    assert all(len(preds[t]) == 1 and preds[t][0]["model_version"] == mv for t in good)
    assert preds[bad] == []
    assert all(sum(r["type"] == "rectanglelabels" for r in preds[t][0]["result"]) == 5 for t in good)
    assert api(ls, "GET", f"/api/projects/{project}/").json()["model_version"] == mv

    again = prelabel(ls, project, "--report", str(report_file), weights=tiny_checkpoint)
    report = json.loads(report_file.read_text())
    assert report["done"] == [] and sorted(s["id"] for s in report["skipped"]) == good
    assert [f["id"] for f in report["failed"]] == [bad] and again.returncode == 1
    assert {t: len(p) for t, p in predictions(ls, project).items()} == {**{t: 1 for t in good}, bad: 0}


def test_a_run_killed_after_its_first_chunk_resumes_without_duplicates(ls, tiny_checkpoint):
    n = 16
    project, ids = new_project(ls, n)
    proc = prelabel(ls, project, "--chunk", "1", background=True, weights=tiny_checkpoint)
    deadline = time.time() + 240
    written = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            written = api(ls, "GET", f"/api/projects/{project}/").json()["total_predictions_number"]
            if written >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL and 1 <= written < n
    resumed = prelabel(ls, project, "--chunk", "3", weights=tiny_checkpoint)
    assert resumed.returncode == 0, resumed.stderr
    counts = {t: len(p) for t, p in predictions(ls, project).items()}
    assert counts == {t: 1 for t in ids}


def test_a_personal_access_token_works_and_is_refreshed(ls, tiny_checkpoint):
    pat = api(ls, "POST", "/api/token/").json()["token"]
    # An access token is renewed `refresh_margin` seconds before it expires (5 min in Label Studio):
    # a margin just under that renews it on the next use after a second.
    credentials = Credentials(ls.url, pat, refresh_margin=299.0)
    first = credentials.token
    time.sleep(1.5)
    second = credentials.token
    assert credentials.kind == "pat" and credentials.refreshes == 2 and first != second
    for header in (f"Bearer {first}", credentials.header):
        r = requests.get(ls.url + "/api/projects/", headers={"Authorization": header}, timeout=30)
        assert r.status_code == 200
    assert requests.get(ls.url + "/api/projects/", headers={"Authorization": f"Bearer {pat}"},
                        timeout=30).status_code == 401, "the PAT itself is not an access token"

    project, ids = new_project(ls, 3)
    run = prelabel(ls, project, key=pat, weights=tiny_checkpoint)   # images need the access token too
    assert run.returncode == 0, run.stderr
    assert {t: len(p) for t, p in predictions(ls, project).items()} == {t: 1 for t in ids}


def test_predictions_equal_the_backend_pre_annotation_and_ray_equals_serial(ls, tiny_checkpoint):
    project, ids = new_project(ls, 4)
    serial = prelabel(ls, project, "--model-version", "serial", weights=tiny_checkpoint)
    assert serial.returncode == 0, serial.stderr
    ray_run = prelabel(ls, project, "--model-version", "ray", "--ray", "--actors", "2", timeout=400,
                       weights=tiny_checkpoint)
    assert ray_run.returncode == 0, ray_run.stdout + ray_run.stderr
    preds = predictions(ls, project)
    by_version = {mv: {t: next(p for p in preds[t] if p["model_version"] == mv) for t in ids}
                  for mv in ("serial", "ray")}
    for t in ids:
        assert_same_prediction(by_version["serial"][t], by_version["ray"][t])
        assert by_version["serial"][t]["score"] == pytest.approx(by_version["ray"][t]["score"], abs=1e-5)

    # The backend, pointed at the same Label Studio, pre-annotates the same tasks identically.
    settings = Settings(weights=tiny_checkpoint, score_threshold=0.0, label_studio_url=ls.url,
                        label_studio_api_key=LS_TOKEN)
    client = create_app(settings).test_client()
    tasks = [{"id": t, "data": api(ls, "GET", f"/api/tasks/{t}/").json()["data"]} for t in ids]
    body = {**payload("05_predict_single"), "tasks": tasks, "project": f"{project}.1", "label_config": CONFIG}
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.get_json()
    for t, result in zip(ids, r.get_json()["results"]):
        assert_same_prediction(result, by_version["serial"][t])


def test_a_view_or_a_limit_selects_the_tasks(ls, tiny_checkpoint):
    project, ids = new_project(ls, 4)
    view = api(ls, "POST", "/api/dm/views/", json={"project": project, "data": {"filters": {
        "conjunction": "and", "items": [{"filter": "filter:tasks:id", "operator": "in", "type": "Number",
                                         "value": {"min": ids[1], "max": ids[2]}}]}}}).json()["id"]
    assert prelabel(ls, project, "--view", str(view), weights=tiny_checkpoint).returncode == 0
    assert {t: len(p) for t, p in predictions(ls, project).items()} == {ids[0]: 0, ids[1]: 1, ids[2]: 1, ids[3]: 0}
    assert prelabel(ls, project, "--limit", "1", weights=tiny_checkpoint).returncode == 0
    assert {t: len(p) for t, p in predictions(ls, project).items()} == {ids[0]: 1, ids[1]: 1, ids[2]: 1, ids[3]: 0}


def test_a_config_the_backend_cannot_serve_is_refused_before_any_work(ls, tiny_checkpoint):
    config = '<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>'
    project, ids = new_project(ls, 1, config=config)
    run = prelabel(ls, project, weights=tiny_checkpoint)
    assert run.returncode == 2 and "no <KeyPointLabels> tag" in run.stderr
    assert predictions(ls, project) == {ids[0]: []}


def person_regions(token: str, box: tuple[float, float, float, float], joints: dict[str, tuple[float, float]],
                   parent: bool = True) -> list[dict]:
    base = {"from_name": "keypoints", "to_name": "image", "original_width": 320, "original_height": 240,
            "image_rotation": 0}
    out = [{**base, "id": f"{token}b", "from_name": "person_bbox", "type": "rectanglelabels",
            "value": {"x": box[0], "y": box[1], "width": box[2], "height": box[3], "rotation": 0,
                      "rectanglelabels": ["person"]}}]
    for i, (label, (x, y)) in enumerate(joints.items()):
        region = {**base, "id": f"{token}k{i}", "type": "keypointlabels",
                  "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}
        if parent:
            region["parentID"] = f"{token}b"
        out.append(region)
    return out


def test_export_keeps_people_apart_and_loads_in_pycocotools(ls, tiny_checkpoint, tmp_path):
    project, ids = new_project(ls, 2)
    a = person_regions("a", (5, 10, 30, 80), {"nose": (15, 15), "left_wrist": (30, 50)})
    b = person_regions("b", (50, 10, 30, 80), {"nose": (60, 15), "right_ankle": (70, 85)})
    orphan = person_regions("c", (0, 0, 0, 0), {"left_hip": (65, 60)}, parent=False)[1:]   # inside b's box
    api(ls, "POST", f"/api/tasks/{ids[0]}/annotations/", json={"result": a + b + orphan})
    out = tmp_path / "coco.json"
    run = subprocess.run([sys.executable, "-m", "backend.cli", "export", "--url", ls.url, "--api-key", LS_TOKEN,
                          "--project", str(project), "--out", str(out)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    coco = COCO(str(out))
    assert sorted(coco.getImgIds()) == ids, "the unannotated task is an image without people"
    image = api(ls, "GET", api(ls, "GET", f"/api/tasks/{ids[1]}/").json()["data"]["image"]).content
    size = Image.open(io.BytesIO(image)).size
    assert (coco.imgs[ids[1]]["width"], coco.imgs[ids[1]]["height"]) == size, "read from the image itself"
    anns = coco.loadAnns(coco.getAnnIds(imgIds=ids[0]))
    assert len(anns) == 2 and coco.loadAnns(coco.getAnnIds(imgIds=ids[1])) == []
    names = coco.loadCats(1)[0]["keypoints"]
    assert names[0] == "nose" and len(names) == 17 and len(coco.loadCats(1)[0]["skeleton"]) == 19
    first, second = sorted(anns, key=lambda x: x["bbox"][0])
    kp = lambda ann, name: ann["keypoints"][3 * names.index(name):3 * names.index(name) + 3]  # noqa: E731
    assert kp(first, "nose") == pytest.approx([15 * 3.2, 15 * 2.4, 2])
    assert kp(first, "left_wrist") == pytest.approx([30 * 3.2, 50 * 2.4, 2]) and kp(first, "right_ankle")[2] == 0
    assert kp(second, "nose") == pytest.approx([60 * 3.2, 15 * 2.4, 2])
    assert kp(second, "left_hip") == pytest.approx([65 * 3.2, 60 * 2.4, 2]), "the orphan joins the box holding it"
    assert first["num_keypoints"] == 2 and second["num_keypoints"] == 3
    assert first["bbox"] == pytest.approx([5 * 3.2, 10 * 2.4, 30 * 3.2, 80 * 2.4])
    assert first["area"] == pytest.approx(30 * 3.2 * 80 * 2.4)

    from clickpose_core.evaluation.data import EvalDataset

    truth = EvalDataset(str(out)).truth(ids[0])
    assert truth.num_people == 2 and truth.keypoints.shape == (2, 17, 3)

    # Predictions: a results file with scores that pycocotools loads against the ground truth.
    assert prelabel(ls, project, weights=tiny_checkpoint).returncode == 0
    results = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "backend.cli", "export", "--url", ls.url, "--api-key", LS_TOKEN,
                          "--project", str(project), "--out", str(results), "--source", "predictions"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = json.loads(results.read_text())
    assert len(rows) == 2 * 5 and all(0.0 <= r["score"] <= 1.0 and len(r["keypoints"]) == 51 for r in rows)
    dt = coco.loadRes(str(results))
    assert len(dt.getAnnIds(imgIds=ids[0])) == 5
    stored = predictions(ls, project)[ids[0]][0]["result"]
    box = next(r for r in stored if r["type"] == "rectanglelabels")["value"]
    assert any(np.allclose(r["bbox"][:2], [box["x"] * 3.2, box["y"] * 2.4]) for r in rows if r["image_id"] == ids[0])
