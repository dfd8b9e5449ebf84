"""The nuclio function: its yaml in CVAT's serverless format, the handler on CVAT's event format
(a small stand-in for nuclio's context/event; the handler code is the real one), and the function
folder deploy.sh assembles. nuclio and CVAT themselves are not run (see README, CVAT section)."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
import types
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import yaml

from clickpose_core.config import ClickPoseConfig
from clickpose_cvat import nuclio
from clickpose_cvat.skeleton import SkeletonLabel, cvat_labels
from cvat_fixtures import REPO, cvat_labels_json, png_bytes

NUCLIO = REPO / "cvat" / "nuclio"
YAMLS = {"cpu": NUCLIO / "function.yaml", "gpu": NUCLIO / "function-gpu.yaml"}


class Response:
    """nuclio_sdk.Response's constructor signature."""

    def __init__(self, body, headers, content_type, status_code):
        self.body, self.headers, self.content_type, self.status_code = body, headers, content_type, status_code


def fake_context():
    logger = types.SimpleNamespace(messages=[])
    for level in ("debug", "info", "warn", "error"):
        setattr(logger, level, lambda msg, *a, _l=level: logger.messages.append((_l, msg)))
    return types.SimpleNamespace(user_data=types.SimpleNamespace(), logger=logger, Response=Response)


def event(body):
    return types.SimpleNamespace(body=body)


@pytest.fixture()
def context(checkpoint, monkeypatch):
    monkeypatch.setenv("CLICKPOSE_WEIGHTS", str(checkpoint))
    monkeypatch.setenv("CLICKPOSE_SCORE_THRESHOLD", "0.0")
    ctx = fake_context()
    nuclio.init_context(ctx)
    return ctx


def load_yaml(variant):
    return yaml.safe_load(YAMLS[variant].read_text())


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_yaml_is_a_cvat_detector_with_the_skeleton_spec(variant):
    config = load_yaml(variant)
    annotations = config["metadata"]["annotations"]
    assert annotations["type"] == "detector" and config["metadata"]["namespace"] == "cvat"
    assert config["spec"]["handler"] == "main:handler"
    spec = json.loads(annotations["spec"])
    expected = cvat_labels(SkeletonLabel.from_config(ClickPoseConfig.r50()), nuclio.BOX_LABEL)
    assert spec == expected == cvat_labels_json()  # yaml, labels.json and the model config agree
    skeleton = spec[0]
    assert skeleton["type"] == "skeleton" and skeleton["svg"]
    assert [s["name"] for s in skeleton["sublabels"]] == list(ClickPoseConfig.r50().keypoint_names)
    env = {e["name"]: e["value"] for e in config["spec"]["env"]}
    assert env["CLICKPOSE_DEVICE"] == ("cuda" if variant == "gpu" else "cpu")
    limits = config["spec"].get("resources", {}).get("limits", {})
    assert (limits.get("nvidia.com/gpu") == 1) == (variant == "gpu")


def test_yaml_installs_what_the_handler_imports_with_the_project_pins():
    """The image gets torch and the packages the handler imports (checked on the staged folder
    below), each with the same specifier as pyproject.toml."""
    pyproject = (REPO / "pyproject.toml").read_text()
    for variant in YAMLS:
        runs = " ".join(d["value"] for d in load_yaml(variant)["spec"]["build"]["directives"]["preCopy"]
                        if d["kind"] == "RUN")
        pins = re.findall(r'"([a-z-]+[<>=]=?[0-9.]+)"|(torch==[0-9.]+)', runs)
        pins = [a or b for a, b in pins]
        assert "torch==2.13.0" in pins
        assert all(f'"{pin}"' in pyproject for pin in pins), pins


def test_svg_draws_every_sublabel_and_edge():
    config = ClickPoseConfig.r50()
    skeleton = cvat_labels_json()[0]
    root = ET.fromstring(f"<svg>{skeleton['svg']}</svg>")
    nodes = {c.get("data-node-id"): c.get("data-label-name") for c in root.iter("circle")}
    assert [nodes[str(i + 1)] for i in range(17)] == list(config.keypoint_names)
    edges = [(int(e.get("data-node-from")) - 1, int(e.get("data-node-to")) - 1) for e in root.iter("line")]
    assert edges == [tuple(e) for e in config.skeleton]
    assert all(0 <= float(c.get(a)) <= 100 for c in root.iter("circle") for a in ("cx", "cy"))


def test_other_keypoint_sets_get_a_drawing_too():
    skeleton = SkeletonLabel.from_config(ClickPoseConfig.tiny(num_keypoints=20), "hand")
    root = ET.fromstring(f"<svg>{skeleton.svg()}</svg>")
    xy = {(c.get("cx"), c.get("cy")) for c in root.iter("circle")}
    assert len(xy) == 20 and all(0 <= float(v) <= 100 for p in xy for v in p)
    assert [s["name"] for s in skeleton.to_cvat()["sublabels"]] == [f"kp{i}" for i in range(20)]


def test_labels_json_is_what_cvat_cli_task_create_accepts():
    """`cvat-cli task create NAME --labels cvat/labels.json ...` builds this request model."""
    from cvat_sdk import models

    request = models.TaskWriteRequest(name="poses", labels=cvat_labels_json())
    assert [len(getattr(label, "sublabels", [])) for label in request.labels] == [17, 0]


def test_handler_answers_cvat_event_format(context, predictor, frame):
    body = {"image": base64.b64encode(png_bytes(frame)).decode(), "threshold": 0.75}
    response = nuclio.handler(context, event(body))
    assert (response.status_code, response.content_type) == (200, "application/json")
    result = json.loads(response.body)
    persons = [p for p in predictor.predict("ref", frame) if p.score >= 0.75]
    assert 0 < len(persons) < predictor.config.num_select
    skeletons = [r for r in result if r["type"] == "skeleton"]
    boxes = [r for r in result if r["type"] == "rectangle"]
    assert len(skeletons) == len(boxes) == len(persons)
    for person, skel, box in zip(persons, skeletons, boxes):
        assert skel["label"] == "person" and box["label"] == nuclio.BOX_LABEL
        assert skel["confidence"] == pytest.approx(person.score)
        assert [e["label"] for e in skel["elements"]] == list(predictor.config.keypoint_names)
        assert {(e["type"], e["outside"]) for e in skel["elements"]} == {("points", False)}
        np.testing.assert_allclose([e["points"] for e in skel["elements"]], person.keypoints)
        assert len(box["points"]) == 4


def test_threshold_default_and_bytes_body(context, predictor, frame):
    """No threshold (CVAT omits it when unset): CLICKPOSE_SCORE_THRESHOLD (0 here) applies; a body
    nuclio did not decode (bytes) is parsed too."""
    body = json.dumps({"image": base64.b64encode(png_bytes(frame)).decode()}).encode()
    response = nuclio.handler(context, event(body))
    assert response.status_code == 200
    assert len(json.loads(response.body)) == 2 * predictor.config.num_select


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    ([1, 2], "must be a JSON object, got list"),
    ({}, 'no "image"'),
    ({"image": 5}, 'no "image"'),
    ({"image": "@@@not base64@@@"}, '"image" is not valid base64'),
    ({"image": base64.b64encode(b"hello").decode()}, '"image": image bytes (5 bytes): not a recognised image format'),
    ({"image": "QUJD", "threshold": "high"}, '"threshold" must be a number between 0 and 1'),
    ({"image": "QUJD", "threshold": 1.5}, '"threshold" must be a number between 0 and 1, got 1.5'),
    ({"image": "QUJD", "threshold": True}, '"threshold" must be a number'),
])
def test_bad_body_gets_400_naming_the_problem(context, body, message):
    response = nuclio.handler(context, event(body))
    assert response.status_code == 400
    assert message in json.loads(response.body)["error"]
    assert context.logger.messages[-1][0] == "warn"


def test_bad_environment_is_named(monkeypatch):
    monkeypatch.setenv("CLICKPOSE_SCORE_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="CLICKPOSE_SCORE_THRESHOLD must be a number, got 'lots'"):
        nuclio.init_context(fake_context())


def test_deploy_stages_a_folder_nuclio_can_run(tmp_path, frame):
    """deploy.sh --stage-only assembles the folder nuctl would build; main.py imported from there
    (nuclio puts the function folder on sys.path) loads the staged weights and answers a request."""
    stage = tmp_path / "fn"
    subprocess.run(["bash", str(NUCLIO / "deploy.sh"), "--stage-only", str(stage), "--gpu"],
                   check=True, capture_output=True, timeout=120)
    assert {p.name for p in stage.iterdir()} == {"main.py", "function-gpu.yaml", "clickpose_core",
                                                   "clickpose_cvat", "weights"}
    (tmp_path / "frame.png").write_bytes(png_bytes(frame))
    deps = {"numpy": "numpy", "opencv-python-headless": "cv2", "pillow": "PIL", "pycocotools": "pycocotools",
            "scipy": "scipy", "tqdm": "tqdm", "requests": "requests"}
    code = textwrap.dedent(f"""
        import base64, json, sys, types
        sys.path.insert(0, {str(stage)!r})
        import main
        class Response:
            def __init__(self, body, headers, content_type, status_code):
                self.body, self.status_code = body, status_code
        log = types.SimpleNamespace(info=print, warn=print, error=print, debug=print)
        ctx = types.SimpleNamespace(user_data=types.SimpleNamespace(), logger=log, Response=Response)
        main.init_context(ctx)
        image = base64.b64encode(open({str(tmp_path / "frame.png")!r}, "rb").read()).decode()
        r = main.handler(ctx, types.SimpleNamespace(body={{"image": image, "threshold": 0.0}}))
        import clickpose_cvat
        print(json.dumps({{"status": r.status_code, "n": len(json.loads(r.body)),
                          "package": clickpose_cvat.__file__,
                          "weights": ctx.user_data.detector.predictor.weights_info["path"],
                          "imported": sorted(m for m in {sorted(deps.values())!r} if m in sys.modules)}}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKPOSE_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and result["n"] > 0
    assert result["package"].startswith(str(stage))
    assert os.path.dirname(result["weights"]) == str(stage / "weights")
    # Every project dependency the handler imported is one the yaml installs.
    runs = " ".join(d["value"] for d in load_yaml("gpu")["spec"]["build"]["directives"]["preCopy"])
    installed = {mod for dist, mod in deps.items() if f'"{dist}' in runs}
    assert set(result["imported"]) <= installed, set(result["imported"]) - installed


def test_readme_shows_the_label_file_and_every_parameter():
    import inspect

    from clickpose_cvat.function import create

    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- cvat-labels -->", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(block) == cvat_labels_json()
    section = readme.split("## CVAT", 1)[1].split("\n## ", 1)[0]
    for name, param in inspect.signature(create).parameters.items():
        assert param.default is not inspect.Parameter.empty  # cvat-cli may call create() bare
        assert param.annotation in ("str", "float", "int", "bool")  # the -p types cvat-cli knows
        assert f"`{name}=" in section, name
