"""Every endpoint through Flask's test client, with the recorded Label Studio payloads and broken
ones. Images come from a fake Label Studio on 127.0.0.1 that demands the token, like /data/upload."""
from __future__ import annotations

import base64
import json
import logging

import numpy as np
import pytest

from backend.app import create_app
from backend.control_models import parse_region_id
from backend.settings import Settings

from backend_fixtures import TOKEN, payload, person_image


@pytest.fixture()
def make_client(tiny_checkpoint, fake_ls):
    def make(**overrides):
        settings = Settings(weights=tiny_checkpoint, score_threshold=0.0, cache_size=8, **overrides)
        app = create_app(settings)
        client = app.test_client()
        return client
    return make


@pytest.fixture()
def client(make_client):
    return make_client()


def setup_body(fake_ls) -> dict:
    body = payload("02_setup")
    body["hostname"], body["access_token"] = fake_ls.url, TOKEN
    return body


def connect(client, fake_ls):
    r = client.post("/setup", json=setup_body(fake_ls))
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_health_names_the_loaded_weights(client, tiny_checkpoint):
    r = client.get("/health")
    body = r.get_json()
    assert r.status_code == 200 and body["status"] == "UP"
    assert body["weights"]["path"] == tiny_checkpoint and body["weights"]["kind"] == "custom"
    assert body["model_version"].startswith("clickpose-") and body["weights"]["sha256"][:12] in body["model_version"]


def test_setup_returns_the_weights_identity(client, fake_ls):
    assert connect(client, fake_ls)["model_version"] == client.get("/health").get_json()["model_version"]


def test_setup_rejects_a_config_it_cannot_serve_with_a_clear_message(client, fake_ls):
    body = setup_body(fake_ls)
    body["schema"] = '<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>'
    r = client.post("/setup", json=body)
    assert r.status_code == 400
    assert "KeyPointLabels" in r.get_json()["error"] and "Traceback" not in r.get_data(as_text=True)


def test_setup_warns_about_labels_the_model_ignores(client, fake_ls):
    body = setup_body(fake_ls)
    body["schema"] = ('<View><Image name="image" value="$image"/><KeyPointLabels name="kp" toName="image">'
                      '<Label value="nose"/><Label value="tail"/></KeyPointLabels></View>')
    r = client.post("/setup", json=body)
    assert r.status_code == 200 and "tail" in r.get_json()["warning"]


def test_predict_recorded_batch_returns_people_per_task_in_order(client, fake_ls):
    connect(client, fake_ls)
    body = payload("04_predict_batch")
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    version = out["model_version"]
    assert len(out["results"]) == len(body["tasks"]) == 2
    for item in out["results"]:
        assert item["model_version"] == version and 0.0 <= item["score"] <= 1.0
        boxes = [x for x in item["result"] if x["type"] == "rectanglelabels"]
        kps = [x for x in item["result"] if x["type"] == "keypointlabels"]
        assert len(boxes) == 5 and len(kps) == 17 * 5   # tiny model keeps 5 people; threshold 0
        assert {x["parentID"] for x in kps} == {b["id"] for b in boxes}
        for x in item["result"]:
            assert x["original_width"] == 640 and x["original_height"] == 480 and "score" in x
    # Images were fetched from Label Studio with the /setup token.
    assert any(auth == f"Token {TOKEN}" and "f109b6a9-person_0_640x480.jpg" in path for path, auth in fake_ls.requests)


def test_batch_and_single_predictions_agree(client, fake_ls):
    connect(client, fake_ls)
    batch = client.post("/predict", json=payload("04_predict_batch")).get_json()["results"]
    single_body = payload("04_predict_batch")
    single_body["tasks"] = single_body["tasks"][1:]
    single = client.post("/predict", json=single_body).get_json()["results"]

    def values(item):
        return [(x["value"]["x"], x["value"]["y"]) for x in item["result"]]
    np.testing.assert_allclose(values(batch[1]), values(single[0]), atol=1e-3)


def test_score_threshold_from_the_config_filters_people(client, fake_ls):
    connect(client, fake_ls)
    body = payload("05_predict_single")
    body["label_config"] = body["label_config"].replace(
        '<KeyPointLabels name="keypoints"', '<KeyPointLabels name="keypoints" model_score_threshold="1.0"')
    item = client.post("/predict", json=body).get_json()["results"][0]
    assert item["result"] == [] and item["score"] == 0.0


def test_exif_orientation_is_respected(client, fake_ls):
    connect(client, fake_ls)
    fake_ls.files["rotated.jpg"] = person_image(640, 480, exif_orientation=6)   # displayed 480 x 640
    body = payload("05_predict_single")
    body["tasks"][0]["data"]["image"] = "/data/upload/1/rotated.jpg"
    item = client.post("/predict", json=body).get_json()["results"][0]
    assert {(x["original_width"], x["original_height"]) for x in item["result"]} == {(480, 640)}


def interactive(client, name: str, task_id: int | None = None) -> dict:
    body = payload(name)
    if task_id is not None:
        body["tasks"][0]["id"] = task_id
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["results"][0]


def nose_of(result: list[dict], person_row: int) -> dict:
    return next(x for x in result if parse_region_id(x["id"]) == (person_row, 0))


def test_interactive_recorded_browser_calls_click_drag_and_negative(client, fake_ls):
    connect(client, fake_ls)
    before = client.post("/predict", json=payload("05_predict_single")).get_json()["results"][0]["result"]
    a = interactive(client, "21_browser_A", task_id=1)
    smart = payload("21_browser_A")["params"]["context"]["result"][1]["value"]
    clicked = [x for x in a["result"] if x["type"] == "keypointlabels" and x["value"]["keypointlabels"] == ["nose"]
               and (x["value"]["x"], x["value"]["y"]) == (smart["x"], smart["y"])]
    assert len(clicked) == 1, "the clicked nose is exactly where it was clicked"
    row = parse_region_id(clicked[0]["id"])[0]
    # One skeleton per person: 5 boxes, 17 joints each, ids fresh vs. the pre-annotation and the context.
    assert sum(x["type"] == "rectanglelabels" for x in a["result"]) == 5
    old_ids = {x["id"] for x in before} | {x["id"] for x in payload("21_browser_A")["params"]["context"]["result"]}
    assert not old_ids & {x["id"] for x in a["result"]}
    # The box of the corrected person holds all its keypoints; other joints moved.
    box = next(x for x in a["result"] if x["id"] == clicked[0]["parentID"])["value"]
    kps = [x["value"] for x in a["result"] if x.get("parentID") == clicked[0]["parentID"]]
    assert all(box["x"] - 1e-6 <= k["x"] <= box["x"] + box["width"] + 1e-6 for k in kps)
    assert all(box["y"] - 1e-6 <= k["y"] <= box["y"] + box["height"] + 1e-6 for k in kps)
    # Drag (C): same smart id, new place -> same person row, nose at the new place.
    c = interactive(client, "21_browser_C", task_id=1)
    dragged = payload("21_browser_C")["params"]["context"]["result"][1]["value"]
    nose = nose_of(c["result"], row)["value"]
    assert (nose["x"], nose["y"]) == (dragged["x"], dragged["y"])
    # Negative Alt+click (D) changes nothing about the clicks: same positions as after C.
    d = interactive(client, "21_browser_D", task_id=1)
    assert (nose_of(d["result"], row)["value"]["x"], nose_of(d["result"], row)["value"]["y"]) == (dragged["x"], dragged["y"])


def test_interactive_keeps_clicks_of_other_labels_across_calls(client, fake_ls):
    connect(client, fake_ls)
    first = interactive(client, "21_browser_A", task_id=77)
    smart = payload("21_browser_A")["params"]["context"]["result"][1]
    row = parse_region_id(next(x["id"] for x in first["result"] if x["type"] == "keypointlabels"
                               and x["value"]["keypointlabels"] == ["nose"]
                               and x["value"]["x"] == smart["value"]["x"]))[0]
    wrist_x, wrist_y = [(x["value"]["x"], x["value"]["y"]) for x in first["result"]
                        if parse_region_id(x["id"]) == (row, 9)][0]
    body = payload("21_browser_A")
    body["tasks"][0]["id"] = 77
    body["params"]["context"]["result"] = [{**smart, "id": "wrist-click", "value": {
        "x": wrist_x + 2.0, "y": wrist_y + 1.0, "width": 0.2, "labels": ["left_wrist"], "keypointlabels": ["left_wrist"]}}]
    second = client.post("/predict", json=body).get_json()["results"][0]["result"]
    nose = nose_of(second, row)["value"]
    assert (nose["x"], nose["y"]) == (smart["value"]["x"], smart["value"]["y"]), "the nose click is remembered"
    wrist = next(x for x in second if parse_region_id(x["id"]) == (row, 9))["value"]
    assert (wrist["x"], wrist["y"]) == pytest.approx((wrist_x + 2.0, wrist_y + 1.0))


@pytest.mark.parametrize("raw,ctype,status,needle", [
    (b"not json", "application/json", 400, "JSON object"),
    (b"[1, 2]", "application/json", 400, "JSON object"),
    (json.dumps({"tasks": "x", "label_config": "<View/>"}).encode(), "application/json", 400, "tasks"),
    (json.dumps({"tasks": [{"id": 1}], "label_config": "<View/>"}).encode(), "application/json", 400, "labeling config"),
    (json.dumps({"tasks": [{"id": 1, "data": {}}]}).encode(), "application/json", 400, "label_config"),
])
def test_broken_predict_bodies_get_4xx_with_a_message(client, fake_ls, raw, ctype, status, needle):
    connect(client, fake_ls)
    r = client.post("/predict", data=raw, content_type=ctype)
    assert r.status_code == status and needle in r.get_json()["error"]
    assert "Traceback" not in r.get_data(as_text=True)


def test_broken_tasks_and_contexts_get_4xx(client, fake_ls):
    connect(client, fake_ls)
    body = payload("05_predict_single")
    body["tasks"][0]["data"] = {"other": "x"}
    r = client.post("/predict", json=body)
    assert r.status_code == 400 and "data.image" in r.get_json()["error"]
    body = payload("21_browser_A")
    body["params"]["context"]["result"][1]["value"]["x"] = "left"
    r = client.post("/predict", json=body)
    assert r.status_code == 400 and "finite number" in r.get_json()["error"]
    body = payload("21_browser_A")
    body["params"]["context"] = ["not", "an", "object"]
    r = client.post("/predict", json=body)
    assert r.status_code == 400 and "context" in r.get_json()["error"]


def test_images_from_other_hosts_are_refused_without_a_request(client, fake_ls):
    connect(client, fake_ls)
    body = payload("05_predict_single")
    body["tasks"][0]["data"]["image"] = "http://169.254.169.254/latest/meta-data/iam"
    r = client.post("/predict", json=body)
    assert r.status_code == 422 and "refusing" in r.get_json()["error"]
    body["tasks"][0]["data"]["image"] = "file:///etc/passwd"
    r = client.post("/predict", json=body)
    assert r.status_code == 422 and "unsupported" in r.get_json()["error"]


def test_batch_with_one_broken_image_keeps_the_others(client, fake_ls):
    connect(client, fake_ls)
    body = payload("04_predict_batch")
    body["tasks"][0]["data"]["image"] = "http://10.0.0.1/x.jpg"
    results = client.post("/predict", json=body).get_json()["results"]
    # No "result": Label Studio stores nothing for that task (it stays pending, a later run retries it).
    assert "result" not in results[0] and "10.0.0.1" in results[0]["error"] and len(results[1]["result"]) == 90


def test_webhook_is_acknowledged_and_broken_webhook_is_400(client):
    assert client.post("/webhook", json=payload("08_webhook")).status_code == 200
    assert client.post("/webhook", data=b"{", content_type="application/json").status_code == 400


def test_basic_auth_is_enforced_except_on_health(make_client, fake_ls):
    client = make_client(basic_auth_user="ls", basic_auth_pass="s3cret-pass")
    assert client.get("/health").status_code == 200
    assert client.post("/setup", json=setup_body(fake_ls)).status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ls:nope").decode()}
    assert client.post("/setup", json=setup_body(fake_ls), headers=wrong).status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret-pass").decode()}
    assert client.post("/setup", json=setup_body(fake_ls), headers=good).status_code == 200


def test_request_body_cap_gives_413(make_client):
    client = make_client(max_request_bytes=2048)
    r = client.post("/predict", data=b"{" + b" " * 4096 + b"}", content_type="application/json")
    assert r.status_code == 413 and "error" in r.get_json()


def test_secrets_never_reach_the_log_even_at_debug(make_client, fake_ls, caplog):
    client = make_client(label_studio_api_key="ls-api-key-abcdef123456", basic_auth_user="u", basic_auth_pass="p4ssword-xyz")
    caplog.set_level(logging.DEBUG)
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p4ssword-xyz").decode()}
    assert client.post("/setup", json=setup_body(fake_ls), headers=auth).status_code == 200
    client.post("/predict", json=payload("05_predict_single"), headers=auth)
    logging.getLogger("probe").info("token in a message: %s / Token %s", TOKEN, "ls-api-key-abcdef123456")
    text = caplog.text
    assert "probe" in text
    for secret in (TOKEN, "ls-api-key-abcdef123456", "p4ssword-xyz", base64.b64encode(b"u:p4ssword-xyz").decode()):
        assert secret not in text


def test_unknown_errors_are_500_without_a_traceback(client, fake_ls, monkeypatch):
    connect(client, fake_ls)
    from backend import model as backend_model

    def boom(*a, **k):
        raise RuntimeError("kaboom internals")
    monkeypatch.setattr(backend_model.ClickPoseBackend, "_pre_annotate", boom)
    r = client.post("/predict", json=payload("05_predict_single"))
    assert r.status_code == 500 and "kaboom" not in r.get_data(as_text=True)
    assert "Traceback" not in r.get_data(as_text=True)
