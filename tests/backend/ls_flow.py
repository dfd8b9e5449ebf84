"""The end-to-end flow through a real Label Studio, against any backend URL (a gunicorn on the
host, or the image in a container): connect, batch predictions through the Data Manager action,
smart-keypoint corrections through `/api/ml/<id>/interactive-annotating`, exactly as the editor
posts them, and a submitted annotation whose webhook must reach the backend."""
from __future__ import annotations

import io
import time
from typing import Callable

import numpy as np
import requests

from backend.control_models import parse_region_id

from backend_fixtures import payload, person_image
from servers import LS_TOKEN, Server

COCO17 = payload("02_setup")["schema"]


def api(ls: Server, method: str, path: str, **kw) -> requests.Response:
    r = requests.request(method, ls.url + path, headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=120, **kw)
    assert r.status_code < 400, f"{method} {path}: {r.status_code} {r.text[:500]}"
    return r


def run_flow(ls: Server, backend_url: str, persons: int | None = None,
             backend_log: Callable[[], str] | None = None) -> dict:
    """Everything an annotator's Label Studio does with the backend; asserts on every step.

    persons: skeletons expected per image (None: whatever the first prediction has, at least one).
    backend_log: returns the backend's gunicorn access log; given, the webhook must show in it.
    Returns {"model_version", "persons"}.
    """
    project = api(ls, "POST", "/api/projects", json={"title": "clickpose e2e", "label_config": COCO17}).json()
    files = {f"file{i}": (f"person_{i}.png", io.BytesIO(person_image(640 + 32 * i, 480, fmt="PNG")), "image/png")
             for i in range(2)}   # each file needs its own field name
    imported = api(ls, "POST", f"/api/projects/{project['id']}/import?return_task_ids=true", files=files).json()
    task_ids = imported["task_ids"]
    assert len(task_ids) == 2
    ml = api(ls, "POST", "/api/ml", json={"url": backend_url, "project": project["id"], "is_interactive": True,
                                          "title": "clickpose"}).json()
    version = requests.get(backend_url + "/health", timeout=10).json()["model_version"]
    assert ml["model_version"] == version

    r = api(ls, "POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project['id']}",
            json={"selectedItems": {"all": False, "included": task_ids}}).json()
    assert "2" in r.get("detail", "") or r.get("processed_items") == 2, r

    for tid, width in zip(task_ids, (640, 672)):
        task = api(ls, "GET", f"/api/tasks/{tid}/").json()
        assert len(task["predictions"]) == 1
        pred = task["predictions"][0]
        assert pred["model_version"] == version
        boxes = [x for x in pred["result"] if x["type"] == "rectanglelabels"]
        persons = persons or len(boxes)
        assert persons >= 1 and len(boxes) == persons and len(pred["result"]) == persons * 18
        assert {x["original_width"] for x in pred["result"]} == {width}

    result = _interactive(ls, ml["id"], task_ids[0], persons)
    if backend_log is not None:
        _annotate_and_see_webhook(ls, task_ids[0], result, backend_log)
    return {"model_version": version, "persons": persons}


def _unambiguous_nose_click(pred: list[dict]) -> tuple[dict, dict]:
    """A predicted nose and a click next to it (+0.25 % in x and y) that the backend's assignment
    rule gives to that nose's person, whatever the model predicted: among the persons whose box
    (+15 %) holds the click, its nose is the nearest, by a clear margin."""
    boxes = {x["id"]: x["value"] for x in pred if x["type"] == "rectanglelabels"}
    noses = [x for x in pred if x["type"] == "keypointlabels" and x["value"]["keypointlabels"] == ["nose"]]

    def holds(box: dict, xy: dict) -> bool:
        return all(box[k] - 0.15 * box[s] <= xy[k] <= box[k] + 1.15 * box[s] for k, s in (("x", "width"), ("y", "height")))

    def dist(nose: dict, xy: dict) -> float:
        return float(np.hypot(nose["value"]["x"] - xy["x"], nose["value"]["y"] - xy["y"]))

    for nose in noses:
        click = {k: nose["value"][k] + 0.25 for k in ("x", "y")}
        if not holds(boxes[nose["parentID"]], click):
            continue
        others = [dist(o, click) for o in noses if o is not nose and holds(boxes[o["parentID"]], click)]
        if all(d > 2 * dist(nose, click) for d in others):
            return nose, click
    raise AssertionError("no predicted nose that a click can claim unambiguously")


def _interactive(ls: Server, ml_id: int, tid: int, persons: int) -> list[dict]:
    """The editor sends the predicted nose of the group plus the smart click, then drags it."""
    pred = api(ls, "GET", f"/api/tasks/{tid}/").json()["predictions"][0]["result"]
    predicted_nose, click = _unambiguous_nose_click(pred)
    row = parse_region_id(predicted_nose["id"])[0]
    context_nose = {**predicted_nose, "origin": "prediction"}
    smart = {"original_width": 640, "original_height": 480, "image_rotation": 0,
             "value": {**click, "width": 0.2, "labels": ["nose"], "keypointlabels": ["nose"]},
             "is_positive": True, "id": "smart00001", "from_name": "keypoints", "to_name": "image",
             "type": "keypointlabels", "origin": "manual"}
    reply = api(ls, "POST", f"/api/ml/{ml_id}/interactive-annotating",
                json={"task": tid, "context": {"result": [context_nose, smart]}}).json()
    assert "errors" not in reply, reply
    result = reply["data"]["result"]
    noses = [x for x in result if x["type"] == "keypointlabels" and x["value"]["keypointlabels"] == ["nose"]
             and (x["value"]["x"], x["value"]["y"]) == (click["x"], click["y"])]
    assert len(noses) == 1, "the clicked joint is exactly where it was clicked"
    corrected = noses[0]["parentID"]
    assert parse_region_id(corrected)[0] == row, "the click corrects the person whose nose it was near"
    box = next(x for x in result if x["id"] == corrected)["value"]
    mine = [x for x in result if x.get("parentID") == corrected]
    assert len(mine) == 17
    for x in mine:
        assert box["x"] - 1e-6 <= x["value"]["x"] <= box["x"] + box["width"] + 1e-6
        assert box["y"] - 1e-6 <= x["value"]["y"] <= box["y"] + box["height"] + 1e-6
    before = {x["value"]["keypointlabels"][0]: (x["value"]["x"], x["value"]["y"]) for x in pred
              if x.get("parentID") == predicted_nose["parentID"]}
    moved = [lab for lab, xy in ((x["value"]["keypointlabels"][0], (x["value"]["x"], x["value"]["y"])) for x in mine)
             if lab != "nose" and not np.allclose(xy, before[lab], atol=1e-6)]
    assert moved, "the decoder loop moved other joints of the corrected person"
    ids = [x["id"] for x in result]
    assert len(set(ids)) == len(ids) and not set(ids) & {x["id"] for x in pred} and "smart00001" not in ids
    assert sum(x["type"] == "rectanglelabels" for x in result) == persons, "one skeleton per person"

    # Drag the smart point: same id, new place; the next reply has fresh ids and the nose there.
    smart["value"] = {**smart["value"], "x": click["x"] + 1.5, "y": click["y"] - 1.0}
    again = api(ls, "POST", f"/api/ml/{ml_id}/interactive-annotating",
                json={"task": tid, "context": {"result": [context_nose, smart]}}).json()["data"]["result"]
    nose = next(x for x in again if parse_region_id(x["id"]) == (row, 0))["value"]
    assert (nose["x"], nose["y"]) == (smart["value"]["x"], smart["value"]["y"])
    assert not {x["id"] for x in again} & set(ids)
    return again


def _annotate_and_see_webhook(ls: Server, tid: int, result: list[dict], backend_log: Callable[[], str],
                              timeout: float = 30) -> None:
    """Submit the corrected skeletons; Label Studio's auto-created webhook must get a 200."""
    before = backend_log().count('"POST /webhook')
    api(ls, "POST", f"/api/tasks/{tid}/annotations", json={"result": result, "ground_truth": False})
    deadline = time.time() + timeout
    while time.time() < deadline:
        hits = [line for line in backend_log().splitlines() if '"POST /webhook' in line]
        if len(hits) > before:
            assert '" 200 ' in hits[-1], hits[-1]
            return
        time.sleep(0.5)
    raise AssertionError(f"no POST /webhook reached the backend within {timeout:.0f} s:\n{backend_log()[-2000:]}")
