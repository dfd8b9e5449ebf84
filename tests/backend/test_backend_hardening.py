"""The security and load findings of issue 8, one test per reproduction (Flask test client and loopback
servers only). Each reproduction failed on the code before the fix; a few neighbours that already held
there are kept beside them as regression tests (`user@host`, a project's own setup, `/webhook []`, a space
in the path). The tests after "second pass" are the findings of the review of the hardening."""
from __future__ import annotations

import base64
import copy
import io
import logging
import tempfile
import threading

import pytest
from PIL import Image

from backend.app import REDACTOR, create_app
from backend.images import ImageError, ImageLoader
from backend.model import get_predictor
from backend.settings import Settings

from backend_fixtures import TOKEN, FakeLabelStudio, payload

ENV_KEY = "env-api-key-0123456789abcdef"


@pytest.fixture()
def make_client(tiny_checkpoint, fake_ls):
    def make(**overrides):
        settings = Settings(**{"weights": tiny_checkpoint, "score_threshold": 0.0, "cache_size": 8, **overrides})
        return create_app(settings).test_client()
    return make


@pytest.fixture()
def other_server():
    """A second loopback server: the 'forbidden' or 'stranger' host of the reproductions."""
    server = FakeLabelStudio()
    yield server
    server.close()


def warm_session(make_client, fake_ls, task_id: int):
    """A connected client whose task `task_id` has had its first interactive call (its session is warm)."""
    client = make_client()
    connect(client, fake_ls.url)
    warm = payload("21_browser_A")
    warm["tasks"][0]["id"] = task_id
    assert client.post("/predict", json=warm).status_code == 200
    return client, warm, get_predictor(client.application.config["clickpose_settings"])


def assert_refinement_runs_during(client, blocking: dict, warm: dict, in_forward: threading.Event,
                                  release: threading.Event, why: str) -> None:
    """Post `blocking` (its forward waits on `release`), then `warm`: the refinement must answer meanwhile."""
    t = threading.Thread(target=lambda: client.post("/predict", json=blocking), daemon=True)
    t.start()
    try:
        assert in_forward.wait(20)
        done = {}
        u = threading.Thread(target=lambda: done.setdefault("r", client.post("/predict", json=warm)), daemon=True)
        u.start()
        u.join(20)
        assert "r" in done and done["r"].status_code == 200, why
    finally:
        release.set()
        t.join(30)


def connect(client, ls_url: str, project: str = "1.1700000000", token: str = TOKEN):
    body = payload("02_setup")
    body["hostname"], body["access_token"], body["project"] = ls_url, token, project
    r = client.post("/setup", json=body)
    assert r.status_code == 200, r.get_json()


def predict_url(client, url, project="1.1700000000", task_id=1):
    body = payload("05_predict_single")
    body["project"] = project
    body["tasks"][0]["data"]["image"], body["tasks"][0]["id"] = url, task_id
    return client.post("/predict", json=body)


def assert_clean_4xx(r, needle: str | None = None):
    text = r.get_data(as_text=True)
    assert 400 <= r.status_code < 500, (r.status_code, text[:300])
    assert "Traceback" not in text and "/site-packages/" not in text and "/work/" not in text
    if needle:
        assert needle in r.get_json()["error"], r.get_json()


# -- 1. allow-list bypass ------------------------------------------------------------------------
@pytest.mark.parametrize("form", [
    "http://{bad}\\@{good}/public/x.jpg",            # urlparse: host good; requests: host bad
    "http://{good}/redirect-to/http://{bad}%5C@{good}/public/x.jpg",   # the same inside a redirect
    "http://user@{bad}/public/x.jpg",
])
def test_allow_list_cannot_be_bypassed_by_ambiguous_urls(make_client, fake_ls, other_server, form):
    good, bad = fake_ls.url.split("//")[1], other_server.url.split("//")[1]
    client = make_client(allowed_hosts=(good,))
    connect(client, fake_ls.url)
    before = len(other_server.requests)
    r = predict_url(client, form.format(good=good, bad=bad))
    assert r.status_code == 422, r.get_json()
    assert len(other_server.requests) == before, "the forbidden server was contacted"


# -- 2. the environment's API key goes to LABEL_STUDIO_URL only ------------------------------------
def test_env_api_key_never_goes_to_a_setup_hostname(make_client, fake_ls, other_server):
    client = make_client(label_studio_api_key=ENV_KEY)      # LABEL_STUDIO_URL unset
    connect(client, other_server.url, project="666.1", token="")   # anyone can send this
    predict_url(client, "/data/upload/1/a.jpg", project="5.1")     # a project without its own setup
    predict_url(client, "/data/upload/1/a.jpg", project="666.1")   # the stranger's own project
    sent = [auth for _, auth in other_server.requests]
    assert all(ENV_KEY not in auth for auth in sent), sent
    assert len(sent) <= 2, "project 5 must not be retargeted to project 666's host"


def test_setup_token_is_used_for_its_own_project_only(make_client, fake_ls, other_server):
    client = make_client()
    connect(client, fake_ls.url, project="1.1")
    connect(client, other_server.url, project="2.1", token="stranger-token-xyz")
    assert predict_url(client, "/data/upload/1/a.jpg", project="1.1").status_code == 200
    assert not any("a.jpg" in path for path, _ in other_server.requests)


# -- 3. a slow image stalls nobody else; total deadline --------------------------------------------
def test_total_download_deadline_stops_a_drip(fake_ls):
    source = Settings(fetch_timeout=1.0, fetch_deadline=1.5).image_source(hostname=fake_ls.url, access_token=TOKEN)
    with pytest.raises(ImageError, match="IMAGE_FETCH_DEADLINE"):
        ImageLoader(source).fetch_bytes(fake_ls.url + "/drip", task_id=1)


def test_a_slow_image_does_not_block_warm_interactive_calls(make_client, fake_ls):
    client = make_client(fetch_timeout=5.0, fetch_deadline=8.0)
    connect(client, fake_ls.url)
    warm = payload("21_browser_A")
    warm["tasks"][0]["id"] = 301
    assert client.post("/predict", json=warm).status_code == 200          # task 301 is now warm
    fake_ls.drip_started.clear()
    slow = payload("21_browser_A")
    slow["tasks"][0]["id"], slow["tasks"][0]["data"]["image"] = 302, fake_ls.url + "/drip"
    other = client.application.test_client()
    t = threading.Thread(target=lambda: other.post("/predict", json=slow), daemon=True)
    t.start()
    assert fake_ls.drip_started.wait(10)
    r = client.post("/predict", json=warm)
    health = client.get("/health")
    still_dripping = fake_ls.drips_open > 0
    t.join(20)
    assert r.status_code == 200 and health.status_code == 200
    assert still_dripping, "the warm call and /health answered only after the slow download ended"


# -- 4. click bookkeeping is capped and linear -----------------------------------------------------
def test_thousands_of_smart_points_are_refused_with_a_message(make_client, fake_ls):
    client = make_client(max_clicks_per_task=64)
    connect(client, fake_ls.url)
    body = payload("21_browser_A")
    smart = body["params"]["context"]["result"][1]
    body["params"]["context"]["result"] = [
        {**copy.deepcopy(smart), "id": f"s{i:05d}", "value": {**smart["value"], "x": 10 + (i % 80), "y": 10 + i % 70}}
        for i in range(2000)]
    assert_clean_4xx(client.post("/predict", json=body), "MAX_CLICKS_PER_TASK")


# -- 5. interactive first ------------------------------------------------------------------------
def test_refinement_does_not_wait_for_a_running_pre_annotation(make_client, fake_ls, monkeypatch):
    client, warm, predictor = warm_session(make_client, fake_ls, task_id=401)
    in_forward, release = threading.Event(), threading.Event()
    original = predictor.predict_batch

    def slow_batch(keys, images, prefetch=False):
        if prefetch:                      # the pre-annotation forward: hold it until told
            in_forward.set()
            release.wait(30)
        return original(keys, images, prefetch=prefetch)
    monkeypatch.setattr(predictor, "predict_batch", slow_batch)
    assert_refinement_runs_during(client, payload("04_predict_batch"), warm, in_forward, release,
                                  "the refinement waited for the pre-annotation forward")


def test_pre_annotation_does_not_evict_annotators_sessions(make_client, fake_ls):
    client = make_client(cache_size=2, prefetch_cache_size=2)
    connect(client, fake_ls.url)
    warm = payload("21_browser_A")
    warm["tasks"][0]["id"] = 501
    assert client.post("/predict", json=warm).status_code == 200
    fetched = len(fake_ls.requests)
    batch = payload("04_predict_batch")
    batch["tasks"] = [{**copy.deepcopy(batch["tasks"][i % 2]), "id": 600 + i} for i in range(6)]
    assert client.post("/predict", json=batch).status_code == 200
    after_batch = len(fake_ls.requests)
    assert client.post("/predict", json=warm).status_code == 200
    assert len(fake_ls.requests) == after_batch > fetched, "the annotator's image was downloaded again (evicted)"


# -- 6. no 500 and no traceback --------------------------------------------------------------------
def deep(n: int) -> bytes:
    return b'{"tasks": ' + b"[" * n + b"]" * n + b"}"


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 90, 90)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("method,path,raw", [
    ("POST", "/train", b"[]"),
    ("POST", "/versions", b""),
    ("POST", "/predict", deep(10_000)),
    ("POST", "/setup", deep(10_000)),
    ("POST", "/webhook", deep(10_000)),
    ("POST", "/webhook", b"[]"),
])
def test_framework_routes_and_deep_json_never_500(make_client, method, path, raw):
    r = make_client().open(path, method=method, data=raw, content_type="application/json")
    assert_clean_4xx(r)


def test_is_training_versions_and_root_answer_without_error(make_client):
    client = make_client()
    assert client.get("/is_training").get_json() == {"is_training": False}
    version = client.get("/health").get_json()["model_version"]
    assert client.post("/versions", json={"project": "1.1"}).get_json()["versions"] == [version]
    assert client.get("/").status_code == 200


def body_with(mutate) -> dict:
    body = payload("05_predict_single")
    mutate(body)
    return body


@pytest.mark.parametrize("name,mutate,needle", [
    ("broken config", lambda b: b.update(label_config="<View><Image"), "labeling config"),
    ("xml declaration", lambda b: b.update(label_config='<?xml version="1.0" encoding="UTF-8"?>' + b["label_config"]),
     None),
    ("cloud uri, no id", lambda b: (b["tasks"][0]["data"].update(image="s3://bucket/key.jpg"),
                                    b["tasks"][0].update(id=None)), "task's integer id"),
    ("surrogate url", lambda b: b["tasks"][0]["data"].update(image="http://127.0.0.1/\ud800.jpg"), "surrogate"),
    ("surrogate project", lambda b: b.update(project="\ud800"), "project"),
    ("port range", lambda b: b["tasks"][0]["data"].update(image="http://127.0.0.1:18081:18099/x.jpg"), "port"),
    ("port too big", lambda b: b["tasks"][0]["data"].update(image="http://127.0.0.1:99999/x.jpg"), "port"),
    ("port sign", lambda b: b["tasks"][0]["data"].update(image="http://127.0.0.1:+18081/x.jpg"), "port"),
])
def test_malformed_predict_inputs_get_4xx(make_client, fake_ls, name, mutate, needle):
    client = make_client()
    connect(client, fake_ls.url)
    r = client.post("/predict", json=body_with(mutate))
    if name == "xml declaration":
        assert r.status_code == 200, r.get_json()      # a declaration is valid XML: served like without
        return
    assert_clean_4xx(r, needle)


def test_huge_integer_coordinate_is_a_400(make_client, fake_ls):
    client = make_client()
    connect(client, fake_ls.url)
    body = payload("21_browser_A")
    body["params"]["context"]["result"][1]["value"]["x"] = 10 ** 30     # sent as a JSON integer literal
    assert_clean_4xx(client.post("/predict", json=body), "context.result[1]")


def test_degenerate_image_shape_is_a_422(make_client, fake_ls):
    client = make_client()
    connect(client, fake_ls.url)
    fake_ls.files["thin.png"] = png(40000, 2)
    r = predict_url(client, "/data/upload/1/thin.png")
    assert r.status_code == 422 and "40000x2" in r.get_json()["error"]


# -- 7. memory per request -------------------------------------------------------------------------
def test_pixel_budget_makes_the_second_holder_wait():
    from backend.serving import Busy, PixelBudget
    budget = PixelBudget(100, wait=0.2)
    with budget.hold(80):
        with pytest.raises(Busy, match="MAX_PIXELS_IN_FLIGHT"):
            with budget.hold(30):
                pass
        assert budget.used == 80
    with budget.hold(10**9):          # larger than the budget: runs alone, never deadlocks
        assert budget.used == 100
    assert budget.used == 0


def test_admission_follows_the_measured_cost():
    from backend.serving import Admission
    adm = Admission(budget=60.0, max_tasks=64, prior=5.0)
    assert adm.admit(100) == 12
    for _ in range(30):
        adm.observe(seconds=1.0, images=4)       # 0.25 s per image measured
    assert adm.admit(100) == 64 and adm.admit(3) == 3
    for _ in range(30):
        adm.observe(seconds=40.0, images=1)
    assert adm.admit(100) == 1, "a request always makes progress"


# -- (issue 9) a batch that cannot finish in time is answered in time, naming the batch tool -------
def test_oversized_batch_predicts_what_fits_and_names_the_batch_tool(make_client, fake_ls):
    client = make_client(max_tasks_per_request=2)
    connect(client, fake_ls.url)
    body = payload("04_predict_batch")
    body["tasks"] = [{**copy.deepcopy(body["tasks"][i % 2]), "id": 700 + i} for i in range(5)]
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert len(results) == 5, "Label Studio needs one item per task, else it drops them all"
    assert all(len(x["result"]) == 90 for x in results[:2])
    for item in results[2:]:
        assert "result" not in item, "Label Studio would store it and then skip the task"
        assert "clickpose-ls prelabel" in item["error"]
    assert "5 tasks" in results[2]["error"], "the first deferred item says why"
    assert all(len(x["error"]) < 100 and "task 702" in x["error"] for x in results[3:]), \
        "the others point at it: a huge selection must not make a huge reply"


def test_batch_stops_when_the_time_budget_is_spent(make_client, fake_ls):
    from backend.model import get_engine

    client = make_client(predict_time_budget=1.0)
    connect(client, fake_ls.url)
    engine = get_engine(client.application.config["clickpose_settings"])
    engine.admission.seconds_per_image = 0.001       # the estimate says everything fits ...
    original = engine.admission.observe
    engine.admission.observe = lambda seconds, images: original(seconds + 5.0, images)   # ... it does not
    body = payload("04_predict_batch")
    body["tasks"] = [{**copy.deepcopy(body["tasks"][i % 2]), "id": 800 + i} for i in range(12)]
    results = client.post("/predict", json=body).get_json()["results"]
    predicted = [x for x in results if "result" in x]
    assert 1 <= len(predicted) < 12 and results[:len(predicted)] == predicted
    assert all("clickpose-ls prelabel" in x["error"] for x in results[len(predicted):])


# -- 8. unauthenticated /setup cannot grow the process -----------------------------------------------
def test_setup_state_is_bounded(make_client, fake_ls):
    from backend.label_config import CONFIGS

    client = make_client(max_setups=10)
    for i in range(60):
        connect(client, fake_ls.url, project=f"{1000 + i}.1", token=f"per-project-token-{i:04d}")
    assert len(client.application.config["clickpose_setups"]) == 10
    assert len(REDACTOR.dynamic) <= 10 and "per-project-token-0000" not in REDACTOR.dynamic
    schema = payload("02_setup")["schema"]
    for i in range(100):
        body = payload("02_setup")
        body["schema"] = schema.replace("<View>", f"<View><!-- {i} -->", 1)
        client.post("/setup", json=body)
    assert len(CONFIGS) <= CONFIGS.capacity


# -- 9. secrets in logs ------------------------------------------------------------------------------
def test_signed_urls_and_url_passwords_never_reach_the_log(fake_ls, caplog):
    create_app(Settings(weights=None), load_model=False)   # installs the redactor
    caplog.set_level(logging.DEBUG)
    host = fake_ls.url.split("//")[1]
    source = Settings(allowed_hosts=(host,)).image_source(hostname=fake_ls.url, access_token=TOKEN)
    url = fake_ls.url + "/public/a.jpg?X-Amz-Signature=amzsig0123456789&token=tok0123456789&X-Amz-Credential=cred0123"
    assert ImageLoader(source).fetch_bytes(url, task_id=1)
    logging.getLogger("label_studio_sdk").info("Resolving url using hostname [http://admin:pw-hunter2@ls:8080]: x")
    assert "public/a.jpg" in caplog.text           # urllib3 did log the request line at DEBUG
    for secret in ("amzsig0123456789", "tok0123456789", "cred0123", "pw-hunter2"):
        assert secret not in caplog.text


# -- 10. minor ---------------------------------------------------------------------------------------
def test_root_is_behind_basic_auth(make_client):
    client = make_client(basic_auth_user="ls", basic_auth_pass="s3cret-pass")
    assert client.get("/").status_code == 401 and client.get("/health").status_code == 200
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret-pass").decode()}
    assert client.get("/", headers=good).status_code == 200


def test_read_timeout_is_reported_as_a_timeout(fake_ls):
    source = Settings(fetch_timeout=1.0).image_source(hostname=fake_ls.url, access_token=TOKEN)
    with pytest.raises(ImageError, match="timed out"):
        ImageLoader(source).fetch_bytes(fake_ls.url + "/stall-body", task_id=1)


@pytest.mark.parametrize("hostname", ["ftp://ls.example.org", "not a url", "http://user:pw@ls.example.org"])
def test_setup_refuses_hostnames_that_are_not_http_base_urls(make_client, hostname):
    body = payload("02_setup")
    body["hostname"] = hostname
    assert_clean_4xx(make_client().post("/setup", json=body), "hostname")


# -- issue 13: rough edges in images.py --------------------------------------------------------------
def test_a_404_from_an_allowed_host_names_that_host(fake_ls, other_server):
    host = other_server.url.split("//")[1]
    source = Settings(allowed_hosts=(host,)).image_source(hostname=fake_ls.url, access_token=TOKEN)
    with pytest.raises(ImageError) as err:
        ImageLoader(source).fetch_bytes(other_server.url + "/missing.jpg", task_id=1)
    assert f"{host} answered HTTP 404" in str(err.value) and "Label Studio" not in str(err.value)


def test_localhost_warning_is_not_logged_per_fetch(fake_ls, caplog):
    port = fake_ls.url.rsplit(":", 1)[1]
    caplog.set_level(logging.WARNING)
    source = Settings(allowed_hosts=(f"127.0.0.1:{port}",)).image_source(
        hostname=f"http://localhost:{port}", access_token=TOKEN)
    for _ in range(3):
        ImageLoader(source).fetch_bytes(fake_ls.url + "/public/a.jpg", task_id=1)
    assert "docker containers" not in caplog.text
    assert caplog.text.count("localhost") <= 1


def test_image_fetches_leave_no_temp_folders(fake_ls, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    source = Settings().image_source(hostname=fake_ls.url, access_token=TOKEN)
    loader = ImageLoader(source)            # never closed, like the tests before
    loader.fetch_bytes("/data/upload/1/a.jpg", task_id=1)
    with pytest.raises(ImageError):
        loader.fetch_bytes(fake_ls.url + "/missing.jpg", task_id=1)
    assert list(tmp_path.iterdir()) == []


# -- the new settings, read from the environment ---------------------------------------------------
def test_new_settings_are_read_and_checked():
    from backend.settings import SettingsError

    env = {"IMAGE_FETCH_DEADLINE": "12", "MAX_TASKS_PER_REQUEST": "7", "PREDICT_TIME_BUDGET": "30",
           "CLICKPOSE_PREFETCH_CACHE_SIZE": "3", "MAX_PIXELS_IN_FLIGHT": "1000", "MAX_SETUPS": "5",
           "MAX_CLICKS_PER_TASK": "9", "ALLOWED_IMAGE_HOSTS": "cdn.example.org,[::1]:8080"}
    s = Settings.from_env(env)
    assert (s.fetch_deadline, s.max_tasks_per_request, s.predict_time_budget, s.prefetch_cache_size,
            s.max_pixels_in_flight, s.max_setups, s.max_clicks_per_task) == (12.0, 7, 30.0, 3, 1000, 5, 9)
    assert Settings.from_env({}) == Settings()
    for bad in ({"PREDICT_TIME_BUDGET": "nan"}, {"IMAGE_FETCH_DEADLINE": "0"}, {"MAX_SETUPS": "0"},
                {"ALLOWED_IMAGE_HOSTS": "http://cdn.example.org"}, {"ALLOWED_IMAGE_HOSTS": "a@b"}):
        with pytest.raises(SettingsError):
            Settings.from_env(bad)


def test_batch_forwards_run_on_one_lower_priority_thread():
    import os

    from backend.serving import BATCH_NICE, Lanes

    lanes = Lanes()
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = [lanes.run_batch(lambda: (threading.get_native_id(),
                                     os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
            for _ in range(3)]
    assert len({tid for tid, _ in seen}) == 1 and seen[0][0] != threading.get_native_id()
    assert {nice for _, nice in seen} == {min(19, here + BATCH_NICE)}


def test_refinement_does_not_wait_for_another_annotators_first_forward(make_client, fake_ls, monkeypatch):
    client, warm, predictor = warm_session(make_client, fake_ls, task_id=451)
    in_forward, release = threading.Event(), threading.Event()
    original = predictor.predict

    def slow_first(key, image):
        in_forward.set()
        release.wait(30)
        return original(key, image)
    monkeypatch.setattr(predictor, "predict", slow_first)
    cold = payload("21_browser_A")
    cold["tasks"][0]["id"] = 452                        # another task, never seen: its first call
    assert_refinement_runs_during(client, cold, warm, in_forward, release,
                                  "the refinement waited for another task's first forward")


def test_tracebacks_in_the_log_are_redacted_too(caplog):
    create_app(Settings(weights=None), load_model=False)
    caplog.set_level(logging.ERROR)
    try:
        raise RuntimeError("GET https://bucket.s3.amazonaws.com/a.jpg?X-Amz-Signature=sigsecret0123 failed")
    except RuntimeError:
        logging.getLogger("probe").exception("download failed")
    assert "download failed" in caplog.text and "RuntimeError" in caplog.text
    assert "sigsecret0123" not in caplog.text


def test_a_space_in_the_path_is_sent_encoded_and_in_the_host_refused(fake_ls):
    host = fake_ls.url.split("//")[1]
    loader = ImageLoader(Settings(allowed_hosts=(host,)).image_source(hostname=fake_ls.url, access_token=TOKEN))
    assert loader.fetch_bytes(fake_ls.url + "/public/a b.jpg", task_id=1)
    assert any(path == "/public/a%20b.jpg" for path, _ in fake_ls.requests)
    with pytest.raises(ImageError):
        loader.fetch_bytes("http://127.0.0.1 .evil/public/a.jpg", task_id=1)


# -- review of the hardening (second pass) ---------------------------------------------------------
def test_the_same_task_twice_in_one_request_is_a_400_not_a_500(make_client, fake_ls):
    client = make_client()
    connect(client, fake_ls.url)
    body = payload("04_predict_batch")
    body["tasks"] = [copy.deepcopy(body["tasks"][0]) for _ in range(2)]     # same id, same image
    assert_clean_4xx(client.post("/predict", json=body), "twice")


@pytest.mark.parametrize("env,needle", [
    ({"ALLOWED_IMAGE_HOSTS": "cdn.example.org:99999"}, "ALLOWED_IMAGE_HOSTS"),
    ({"LABEL_STUDIO_URL": "http://admin:pw@ls.example.org:8080"}, "LABEL_STUDIO_URL"),
    ({"LABEL_STUDIO_URL": "http://ls.example.org:8080\\@other.example.org"}, "LABEL_STUDIO_URL"),
    ({"LABEL_STUDIO_URL": "http://ls.example.org:99999"}, "LABEL_STUDIO_URL"),
])
def test_url_settings_are_checked_at_start_by_the_fetch_parser(env, needle):
    from backend.settings import SettingsError
    with pytest.raises(SettingsError, match=needle):
        Settings.from_env(env)


def test_port_zero_is_refused_not_read_as_the_default_port():
    from backend.images import parse_http_url
    with pytest.raises(ImageError, match="port"):
        parse_http_url("http://127.0.0.1:0/x.jpg")


def test_a_url_password_holding_an_at_sign_is_redacted_whole():
    from backend.app import Redactor
    text = Redactor().clean("Resolving url using hostname [http://admin:hunter@2x@ls:8080]: /data/x")
    assert "hunter" not in text and "2x" not in text and "ls:8080" in text


def test_a_session_evicted_before_the_interactive_lane_is_rebuilt_outside_it(make_client, fake_ls, monkeypatch):
    """Another annotator's first forward can evict a task's fresh session before its refinement takes
    the lane; the full forward that rebuilds it must not run inside the interactive lane."""
    from backend.model import get_engine

    client = make_client()
    connect(client, fake_ls.url)
    engine = get_engine(client.application.config["clickpose_settings"])
    predictor = engine.predictor
    original = predictor.predict
    under_lane, evicted = [], []

    def predict_then_evict_once(key, image):
        under_lane.append(engine.lanes._interactive.locked())
        persons = original(key, image)
        if not evicted:
            evicted.append(key)
            predictor.forget(key)          # as if cache_size other first forwards had just run
        return persons
    monkeypatch.setattr(predictor, "predict", predict_then_evict_once)
    cold = payload("21_browser_A")
    cold["tasks"][0]["id"] = 461
    before = len(fake_ls.requests)
    r = client.post("/predict", json=cold)
    assert r.status_code == 200, r.get_json()
    assert evicted and under_lane == [False, False], "a full forward ran while holding the interactive lane"
    downloads = [path for path, _ in fake_ls.requests[before:] if path.startswith("/data/upload/")]
    assert len(downloads) == 1, "the image was downloaded again instead of reused"


def test_a_chunked_body_without_content_length_is_capped_too():
    """gunicorn (and Werkzeug's server) pass a chunked body through uncapped: MAX_REQUEST_BYTES must
    hold without a Content-Length header as well, not only in front of it."""
    import requests
    from werkzeug.serving import make_server

    app = create_app(Settings(max_request_bytes=4096), load_model=False)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def chunks():                    # 2 MB in 20 chunks, no Content-Length: Transfer-Encoding: chunked
        yield b'{"action": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}'
    try:
        url = f"http://127.0.0.1:{server.server_port}/webhook"
        r = requests.post(url, data=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 413 and "MAX_REQUEST_BYTES" in r.json()["error"], (r.status_code, r.text[:200])
        small = requests.post(url, data=iter([b'{"action": ', b'"ANNOTATION_CREATED"}']),
                              headers={"Content-Type": "application/json"}, timeout=30)
        assert small.status_code == 200 and small.json()["action"] == "ANNOTATION_CREATED"
    finally:
        server.shutdown()
        thread.join(10)


def test_the_url_checked_is_byte_for_byte_the_url_sent(fake_ls):
    """requests re-quotes what it is given (`%2E` -> `.`, `%41` -> `A`): the canonical URL is the one it sends."""
    from urllib.parse import urlsplit

    host = fake_ls.url.split("//")[1]
    loader = ImageLoader(Settings(allowed_hosts=(host,)).image_source(hostname=fake_ls.url, access_token=TOKEN))
    url = fake_ls.url + "/public/%61%2E/../%41.jpg?x=%7E"
    canonical = loader.check_url(url)
    before = len(fake_ls.requests)
    loader.fetch_bytes(url, task_id=1)
    split = urlsplit(canonical)
    assert fake_ls.requests[before][0] == f"{split.path}?{split.query}", (canonical, fake_ls.requests[before:])
