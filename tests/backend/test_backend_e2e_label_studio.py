"""End to end: a real Label Studio (PyPI `label-studio`) on 127.0.0.1 talks to the backend under
gunicorn. Pre-annotation through the Data Manager action, smart-keypoint corrections through
Label Studio's interactive endpoint, exactly as the editor posts them, and the webhook of a
submitted annotation (tests/backend/ls_flow.py; test_container.py runs it against the image)."""
from __future__ import annotations

import io

import pytest
import requests

from backend_fixtures import person_image
from ls_flow import COCO17, api, run_flow
from servers import label_studio_and_backend, start_backend, stop

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_checkpoint):
    work = tmp_path_factory.mktemp("e2e")
    with label_studio_and_backend(work, tiny_checkpoint, GUNICORN_CMD_ARGS="--access-logfile -") as (ls, backend):
        yield ls, backend


def test_predictions_and_interactive_refinement_through_label_studio(stack):
    ls, backend = stack
    run_flow(ls, backend.url, persons=5, backend_log=lambda: backend.log.read_text(errors="replace"))


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
