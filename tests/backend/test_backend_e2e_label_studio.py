"""End to end: a real Label Studio (PyPI `label-studio`) on 127.0.0.1 talks to the backend under
gunicorn. Pre-annotation through the Data Manager action, smart-keypoint corrections through
Label Studio's interactive endpoint, exactly as the editor posts them, and the webhook of a
submitted annotation (tests/backend/ls_flow.py; test_container.py runs it against the image)."""
from __future__ import annotations

import pytest

from ls_flow import run_flow
from servers import label_studio_and_backend

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_checkpoint):
    work = tmp_path_factory.mktemp("e2e")
    with label_studio_and_backend(work, tiny_checkpoint, GUNICORN_CMD_ARGS="--access-logfile -") as (ls, backend):
        yield ls, backend


def test_predictions_and_interactive_refinement_through_label_studio(stack):
    ls, backend = stack
    run_flow(ls, backend.url, persons=5, backend_log=lambda: backend.log.read_text(errors="replace"))
