"""End to end: a real Label Studio (PyPI `label-studio`) on 127.0.0.1 talks to the backend under
gunicorn. Pre-annotation through the Data Manager action, then smart-keypoint corrections through
Label Studio's interactive endpoint, exactly as the editor posts them."""
from __future__ import annotations

import io

import numpy as np
import pytest
import requests

from backend.control_models import parse_region_id

from backend_fixtures import payload, person_image
from servers import LS_TOKEN, label_studio_and_backend, start_backend, stop

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COCO17 = payload("02_setup")["schema"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_checkpoint):
    work = tmp_path_factory.mktemp("e2e")
    with label_studio_and_backend(work, tiny_checkpoint) as (ls, backend):
        yield ls, backend


def api(ls, method: str, path: str, **kw) -> requests.Response:
    r = requests.request(method, ls.url + path, headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=120, **kw)
    assert r.status_code < 400, f"{method} {path}: {r.status_code} {r.text[:500]}"
    return r


def test_predictions_and_interactive_refinement_through_label_studio(stack):
    ls, backend = stack
    project = api(ls, "POST", "/api/projects", json={"title": "clickpose e2e", "label_config": COCO17}).json()
    files = {f"file{i}": (f"person_{i}.png", io.BytesIO(person_image(640 + 32 * i, 480, fmt="PNG")), "image/png")
             for i in range(2)}   # each file needs its own field name
    imported = api(ls, "POST", f"/api/projects/{project['id']}/import?return_task_ids=true", files=files).json()
    task_ids = imported["task_ids"]
    assert len(task_ids) == 2
    ml = api(ls, "POST", "/api/ml", json={"url": backend.url, "project": project["id"], "is_interactive": True,
                                          "title": "clickpose"}).json()
    version = requests.get(backend.url + "/health", timeout=10).json()["model_version"]
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
        assert len(boxes) == 5 and len(pred["result"]) == 5 * 18
        assert {x["original_width"] for x in pred["result"]} == {width}

    # Interactive: the editor sends the predicted nose of the group plus the smart click.
    tid = task_ids[0]
    pred = api(ls, "GET", f"/api/tasks/{tid}/").json()["predictions"][0]["result"]
    predicted_nose = next(x for x in pred if x["type"] == "keypointlabels" and x["value"]["keypointlabels"] == ["nose"])
    row = parse_region_id(predicted_nose["id"])[0]
    click = {"x": predicted_nose["value"]["x"] + 3.0, "y": predicted_nose["value"]["y"] + 2.0}
    context_nose = {**predicted_nose, "origin": "prediction"}
    smart = {"original_width": 640, "original_height": 480, "image_rotation": 0,
             "value": {**click, "width": 0.2, "labels": ["nose"], "keypointlabels": ["nose"]},
             "is_positive": True, "id": "smart00001", "from_name": "keypoints", "to_name": "image",
             "type": "keypointlabels", "origin": "manual"}
    reply = api(ls, "POST", f"/api/ml/{ml['id']}/interactive-annotating",
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
    assert sum(x["type"] == "rectanglelabels" for x in result) == 5, "one skeleton per person"

    # Drag the smart point: same id, new place; the next reply has fresh ids and the nose there.
    smart["value"] = {**smart["value"], "x": click["x"] + 1.5, "y": click["y"] - 1.0}
    again = api(ls, "POST", f"/api/ml/{ml['id']}/interactive-annotating",
                json={"task": tid, "context": {"result": [context_nose, smart]}}).json()["data"]["result"]
    nose = next(x for x in again if parse_region_id(x["id"]) == (row, 0))["value"]
    assert (nose["x"], nose["y"]) == (smart["value"]["x"], smart["value"]["y"])
    assert not {x["id"] for x in again} & set(ids)


def test_retrieve_predictions_beyond_the_cap_stores_what_fits_and_names_the_batch_tool(stack, tmp_path,
                                                                                      tiny_checkpoint):
    """What Label Studio 1.23.2 really does with an answer that defers tasks: it stores the predicted
    ones, skips the items without "result" (logging them, with our message), and the next Retrieve
    Predictions continues where this one stopped; the backend process lives on."""
    ls, _ = stack
    backend = start_backend(tmp_path, tiny_checkpoint, ls.url, MAX_TASKS_PER_REQUEST="2")
    try:
        project = api(ls, "POST", "/api/projects", json={"title": "clickpose cap", "label_config": COCO17}).json()
        files = {f"file{i}": (f"p{i}.png", io.BytesIO(person_image(320 + 16 * i, 240, fmt="PNG")), "image/png")
                 for i in range(5)}
        task_ids = api(ls, "POST", f"/api/projects/{project['id']}/import?return_task_ids=true",
                       files=files).json()["task_ids"]
        api(ls, "POST", "/api/ml", json={"url": backend.url, "project": project["id"], "is_interactive": True,
                                         "title": "clickpose capped"})

        def retrieve_and_count() -> int:
            api(ls, "POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project['id']}",
                json={"selectedItems": {"all": False, "included": task_ids}})
            # Listed, never `GET /api/tasks/<id>/`: opening a task makes LS predict it one by one.
            preds = api(ls, "GET", f"/api/predictions/?project={project['id']}").json()
            per_task = [sum(p["task"] == t for p in preds) for t in task_ids]
            assert set(per_task) <= {0, 1}, per_task
            return sum(per_task)

        assert retrieve_and_count() == 2
        assert "clickpose-ls prelabel" in ls.log.read_text(errors="replace"), "LS logs the deferred items"
        assert retrieve_and_count() == 4, "the next run takes the tasks still without a prediction"
        assert retrieve_and_count() == 5
        assert backend.proc.poll() is None and requests.get(backend.url + "/health", timeout=10).status_code == 200
    finally:
        stop(backend.proc)
