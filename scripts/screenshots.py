#!/usr/bin/env python
"""Screenshots of the annotator workflow (README, "Annotator workflow") in the real Label Studio editor, headless
Debian chromium, into docs/img/. Reuses the fixtures of the real-browser test
(tests/backend/servers.py, tests/backend/browser_workflow.py): a throw-away Label Studio from .venv-ls
and the backend under gunicorn, both on 127.0.0.1.

    .venv/bin/python scripts/screenshots.py [--weights CKPT] [--score-threshold 0.3] [--out docs/img]

Without --weights a tiny random model is used (its "people" are random boxes: fine for showing the
editor's mechanics, not the model's quality).
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "backend")]

from PIL import Image  # noqa: E402

from browser_workflow import JOINTS, Editor, create_project, people_image  # noqa: E402
from servers import save_tiny_checkpoint, start_backend, start_label_studio, stop  # noqa: E402

from backend.settings import Settings  # noqa: E402


def save(page, path: Path) -> int:
    """A viewport screenshot, palette-quantised (the editor UI survives 256 colours well)."""
    img = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="checkpoint for the backend (default: a tiny random model)")
    ap.add_argument("--score-threshold", type=float, default=None,
                    help="MODEL_SCORE_THRESHOLD (default 0 for the tiny model, else the backend default)")
    ap.add_argument("--out", default=str(REPO / "docs" / "img"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="clickpose-screens-"))
    weights = args.weights or save_tiny_checkpoint(work / "tiny.pth", "screenshots only")
    if args.score_threshold is not None:
        threshold = args.score_threshold
    else:   # the test fixture's backend shows everything (0); real weights get the product default
        threshold = 0.0 if not args.weights else Settings.from_env({}).score_threshold
    extra = {"MODEL_SCORE_THRESHOLD": str(threshold)}
    t0 = time.time()
    ls = start_label_studio(work)
    backend = None
    try:
        backend = start_backend(work, weights, ls.url, **extra)
        image, people = people_image()
        pid, tid = create_project(ls.url, backend.url, image, title="Click-Pose keypoints")
        sizes = {}
        with sync_playwright() as pw:
            editor, context = Editor.launch(pw, ls.url, str(work / "chromium-profile"))
            try:
                editor.login()
                page = editor.page
                page.goto(f"{ls.url}/projects/{pid}/settings/annotation")
                page.get_by_text("Use predictions to prelabel tasks").wait_for()
                sizes["0-settings-prelabel-off.png"] = save(page, out / "0-settings-prelabel-off.png")

                editor.open_task(pid, tid)
                sizes["1-task-opened.png"] = save(page, out / "1-task-opened.png")

                editor.switch_on_auto_annotation()
                editor.pick_smart_keypoint_tool()
                editor.select_label("left_wrist")
                page.locator(".lsf-tool_smart", has_text="Auto-Detect").hover()   # show the group's tooltip
                page.wait_for_timeout(500)
                sizes["2-smart-keypoint-tool.png"] = save(page, out / "2-smart-keypoint-tool.png")
                page.mouse.move(10, 10)

                editor.click_image(*people[0][JOINTS.index("left_wrist")], natural=(640, 480))
                editor.select_label("nose")
                editor.click_image(*people[1][JOINTS.index("nose")], natural=(640, 480))
                page.mouse.move(10, 10)
                page.wait_for_timeout(500)
                sizes["3-suggestions.png"] = save(page, out / "3-suggestions.png")

                editor.accept_suggestions()
                # Unfold the first person in the Regions panel: its 17 keypoints hang under its box.
                page.locator(".lsf-outliner-tree .lsf-tree-switcher_close").first.click()
                page.mouse.move(10, 10)
                page.wait_for_timeout(500)
                sizes["4-accepted.png"] = save(page, out / "4-accepted.png")
            finally:
                context.close()
    finally:
        if backend is not None:
            stop(backend.proc)
        stop(ls.proc)
    for name, size in sizes.items():
        print(f"{out / name}: {size / 1024:.0f} KiB")
    print(f"total {sum(sizes.values()) / 1024:.0f} KiB in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
