"""The annotator workflow of the README, driven in a real Label Studio editor (Debian chromium,
headless, through playwright). Shared by tests/backend/test_browser_workflow.py and
scripts/screenshots.py.

Nothing here downloads a browser: playwright only drives /usr/bin/chromium (scripts/bootstrap_browser.sh
installs it)."""
from __future__ import annotations

import io
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests
from PIL import Image

from backend_fixtures import payload
from servers import LS_PASSWORD, LS_TOKEN, LS_USER

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
COCO17 = payload("02_setup")["schema"]
JOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
          "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
          "right_knee", "left_ankle", "right_ankle"]


def people_image(width: int = 640, height: int = 480) -> tuple[bytes, list[np.ndarray]]:
    """A synthetic PNG with two clearly visible people (every joint visible), and their true joints
    as [17, 2] pixel arrays."""
    from clickpose_core.synth.generator import SceneConfig, render_scene

    cfg = SceneConfig(min_people=2, max_people=3, max_objects=0, size_mix=(0.0, 1.0, 0.0), medium=(220.0, 300.0))
    img, anns = render_scene(3, 21, width, height, cfg)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG", optimize=True)
    joints = [np.asarray(a["keypoints"], dtype=float).reshape(17, 3)[:, :2] for a in anns]
    return buf.getvalue(), joints


class LabelStudioAPI:
    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        r = requests.request(method, self.url + path, headers={"Authorization": f"Token {LS_TOKEN}"},
                             timeout=120, **kw)
        assert r.status_code < 400, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json() if r.content else None


def create_project(ls_url: str, backend_url: str, image: bytes, title: str = "clickpose browser") -> tuple[int, int]:
    """The project the workflow prescribes: COCO-17 config, our backend connected with interactive
    pre-annotations on, and pre-labelling from predictions off. Returns (project id, task id)."""
    api = LabelStudioAPI(ls_url)
    project = api("POST", "/api/projects", json={"title": title, "label_config": COCO17})
    pid = project["id"]
    tids = api("POST", f"/api/projects/{pid}/import?return_task_ids=true",
               files={"file0": ("people.png", io.BytesIO(image), "image/png")})["task_ids"]
    api("POST", "/api/ml", json={"url": backend_url, "project": pid, "is_interactive": True, "title": "clickpose"})
    patched = api("PATCH", f"/api/projects/{pid}", json={"show_collab_predictions": False})
    assert patched["show_collab_predictions"] is False
    return pid, tids[0]


@dataclass
class Editor:
    """One logged-in headless chromium page on the Label Studio editor."""

    page: Any
    ls_url: str
    calls: list[tuple[dict, dict]] = field(default_factory=list)   # (editor request, LS reply) per interactive call

    # -- browser --------------------------------------------------------------------------
    @classmethod
    def launch(cls, playwright: Any, ls_url: str, user_data_dir: str | None = None) -> tuple["Editor", Any]:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir or tempfile.mkdtemp(prefix="chromium-"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport=VIEWPORT)
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(60_000)
        editor = cls(page, ls_url)
        page.on("requestfinished", editor._record)
        return editor, context

    def _record(self, request: Any) -> None:
        if "/interactive-annotating" not in request.url:
            return
        try:
            self.calls.append((json.loads(request.post_data or "{}"), request.response().json()))
        except Exception as exc:  # a failed call is reported by the waiting step
            self.calls.append(({}, {"errors": [repr(exc)]}))

    # -- workflow steps -------------------------------------------------------------------
    def login(self) -> None:
        self.page.goto(self.ls_url + "/user/login/")
        self.page.fill("input[name=email]", LS_USER)
        self.page.fill("input[name=password]", LS_PASSWORD)
        self.page.click("button[type=submit], input[type=submit]")
        self.page.wait_for_url(lambda url: "/user/login" not in url)

    def open_task(self, project: int, task: int) -> None:
        self.page.goto(f"{self.ls_url}/projects/{project}/data?task={task}")
        self.page.wait_for_function(
            "() => { const a = window.Htx && window.Htx.annotationStore && window.Htx.annotationStore.selected;"
            " const img = document.querySelector('img[src^=blob]');"
            " return a && img && img.complete && img.naturalWidth > 0 }")
        self.page.wait_for_timeout(500)

    def switch_on_auto_annotation(self) -> None:
        self.page.get_by_text("Auto-Annotation", exact=True).click()
        self.page.wait_for_function("() => window.Htx.autoAnnotation === true")

    def pick_smart_keypoint_tool(self) -> None:
        self.page.locator(".lsf-tool_smart", has_text="Auto-Detect").click()   # the toolbar group
        tool = self.page.locator(".lsf-tool_smart[aria-label=key-point-tool]")
        tool.click()
        self.page.wait_for_function(
            "() => document.querySelector('.lsf-tool_smart[aria-label=key-point-tool]')"
            ".classList.contains('lsf-tool_active')")

    def select_label(self, label: str) -> None:
        chip = self.page.locator(".lsf-label_clickable").filter(
            has=self.page.locator(".lsf-label__text", has_text=re.compile(f"^{re.escape(label)}$")))
        chip.click()
        self.page.wait_for_function(
            "label => window.Htx.annotationStore.selected.names.get('keypoints').selectedLabels"
            ".some(l => l.value === label)", arg=label)

    def image_box(self) -> dict:
        """Where the image is drawn on the page: the editor may zoom it to fill the stage, so this is
        the image node's box, not the canvas' box."""
        return self.page.locator("img[src^=blob]").first.bounding_box()

    def click_image(self, x_px: float, y_px: float, natural: tuple[int, int]) -> tuple[float, float]:
        """Click at image pixel (x, y); wait for the backend's reply to this click to be shown.
        Returns the percent coordinates the editor recorded for the new smart point."""
        box = self.image_box()
        n = len(self.calls)
        self.page.mouse.click(box["x"] + x_px / natural[0] * box["width"], box["y"] + y_px / natural[1] * box["height"])
        deadline = time.time() + 120
        while len(self.calls) <= n:
            assert time.time() < deadline, "no interactive call after the click"
            self.page.wait_for_timeout(100)
        request, reply = self.calls[-1]
        assert "errors" not in reply, reply
        self.wait_for_suggestions(len(reply["data"]["result"]))
        smart = [r for r in request["context"]["result"] if r.get("is_positive") is True]
        return smart[-1]["value"]["x"], smart[-1]["value"]["y"]

    def wait_for_suggestions(self, count: int) -> None:
        self.page.wait_for_function(f"() => window.Htx.annotationStore.selected.suggestions.size === {count}")
        self.page.wait_for_timeout(300)   # drawn

    def accept_suggestions(self) -> None:
        self.page.locator("[data-testid=bottombar-accept-suggestions-button]").click()
        self.page.wait_for_function("() => window.Htx.annotationStore.selected.suggestions.size === 0")
        self.page.wait_for_timeout(300)

    def editor_result(self) -> list[dict]:
        return self.page.evaluate("() => window.Htx.annotationStore.selected.serializeAnnotation()")

    def submit(self) -> None:
        with self.page.expect_response(lambda r: "/annotations" in r.url and r.request.method == "POST") as resp:
            self.page.get_by_role("button", name="Submit current annotation").click()
        assert resp.value.status < 400, resp.value.text()


def skeletons(result: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """box id -> {joint label: (x %, y %)}; fails on anything that is not one skeleton per person:
    a keypoint without a box, two keypoints of one joint in one person, or any other region."""
    boxes = {r["id"]: r for r in result if r["type"] == "rectanglelabels"}
    people: dict[str, dict[str, tuple[float, float]]] = {b: {} for b in boxes}
    for r in result:
        if r["type"] == "rectanglelabels":
            continue
        assert r["type"] == "keypointlabels", r
        assert r.get("parentID") in boxes, f"keypoint without its person's box: {r}"
        label = r["value"]["keypointlabels"][0]
        assert label not in people[r["parentID"]], f"two {label} keypoints for person {r['parentID']}"
        people[r["parentID"]][label] = (r["value"]["x"], r["value"]["y"])
    return people
