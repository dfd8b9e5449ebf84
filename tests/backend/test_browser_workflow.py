"""The documented annotator workflow (README, "Annotator workflow") in a real browser: a real
Label Studio 1.23 (.venv-ls) on 127.0.0.1, the backend under gunicorn with a tiny random checkpoint,
and the real labeling editor in headless Debian chromium driven by playwright.

Project settings as the workflow prescribes (COCO-17 config, backend connected with interactive
pre-annotations on, pre-labelling from predictions off). In the editor: Auto-Annotation on, the smart
keypoint tool of the "Auto-Detect" group, a joint label, a click on the image; a second click with
another label on the other person; accept the suggestions once; submit. The annotation read back
through the API must hold exactly one skeleton per person, with both clicked joints exactly where the
editor recorded the clicks (percent coordinates)."""
from __future__ import annotations

import time

import pytest

from browser_workflow import JOINTS, Editor, create_project, people_image, skeletons, LabelStudioAPI
from servers import label_studio_and_backend

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

playwright_api = pytest.importorskip("playwright.sync_api", reason="scripts/test.sh installs playwright")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_checkpoint):
    work = tmp_path_factory.mktemp("browser")
    with label_studio_and_backend(work, tiny_checkpoint) as (ls, backend):
        yield ls, backend, work


def test_documented_workflow_gives_one_skeleton_per_person(stack):
    ls, backend, work = stack
    t0 = time.time()
    image, people = people_image()
    pid, tid = create_project(ls.url, backend.url, image)
    wrist_px = people[0][JOINTS.index("left_wrist")]
    nose_px = people[1][JOINTS.index("nose")]

    with playwright_api.sync_playwright() as pw:
        editor, context = Editor.launch(pw, ls.url, str(work / "chromium-profile"))
        try:
            editor.login()
            editor.open_task(pid, tid)
            assert editor.editor_result() == [], "predictions must not be copied into the annotation"

            editor.switch_on_auto_annotation()
            editor.pick_smart_keypoint_tool()
            editor.select_label("left_wrist")
            wrist = editor.click_image(*wrist_px, natural=(640, 480))
            editor.select_label("nose")
            nose = editor.click_image(*nose_px, natural=(640, 480))
            # The editor records the click where it was made (within a pixel of the page).
            for (x, y), px in ((wrist, wrist_px), (nose, nose_px)):
                assert abs(x - px[0] / 6.4) < 0.5 and abs(y - px[1] / 4.8) < 0.5, ((x, y), px)

            suggested = editor.calls[-1][1]["data"]["result"]
            n_people = len(skeletons(suggested))
            assert n_people >= 2 and len(suggested) == 18 * n_people, "the reply is one skeleton per person"
            editor.accept_suggestions()

            in_editor = editor.editor_result()
            assert not any("is_positive" in r for r in in_editor), "accepting removes the smart points"
            editor.submit()
        except Exception:
            editor.page.screenshot(path=str(work / "failure.png"))
            raise
        finally:
            context.close()

    annotations = LabelStudioAPI(ls.url)("GET", f"/api/tasks/{tid}/annotations")
    assert len(annotations) == 1
    result = annotations[0]["result"]
    persons = skeletons(result)
    assert len(persons) == n_people, "one skeleton per person: no duplicate skeleton after accepting"
    assert len(result) == 18 * n_people
    assert all(sorted(joints) == sorted(JOINTS) for joints in persons.values()), "every person has 17 joints"
    for label, clicked in (("left_wrist", wrist), ("nose", nose)):
        exact = [box for box, joints in persons.items() if joints[label] == clicked]
        assert len(exact) == 1, f"the clicked {label} is exactly where it was clicked ({clicked})"
    assert time.time() - t0 < 170
