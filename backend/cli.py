"""`clickpose-ls`: batch tools over a Label Studio project (pre-label, export).

Exit status: 0 all done, 1 some tasks failed (see the summary / --report), 2 the run could not
start or stopped on an error (re-running resumes), 130 interrupted (re-running resumes).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from clickpose_core.commands import add_precision_argument


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL", ""),
                   help="Label Studio base URL (default: $LABEL_STUDIO_URL)")
    p.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY", ""),
                   help="legacy token or personal access token (default: $LABEL_STUDIO_API_KEY)")
    p.add_argument("--project", type=int, required=True, help="project id")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clickpose-ls", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prelabel", help="write the model's predictions to every pending task of a project",
                       description="Pre-label a project: one prediction of MODEL_VERSION per task, resumable.")
    _common(p)
    p.add_argument("--model-version", help="model version of the predictions (default: the weights' "
                                           "model_version, the one the backend reports)")
    p.add_argument("--weights", default=os.environ.get("CLICKPOSE_WEIGHTS") or None,
                   help="checkpoint (default: $CLICKPOSE_WEIGHTS, else the default weights in weights/)")
    p.add_argument("--device", default=os.environ.get("CLICKPOSE_DEVICE", "cpu") or "cpu",
                   help="cpu or cuda[:n] (default: $CLICKPOSE_DEVICE or cpu)")
    add_precision_argument(p)
    p.add_argument("--chunk", type=_positive, default=200, help="predictions per bulk import (default 200)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the model on Ray: alone, a local Ray; with ADDRESS, join that cluster")
    p.add_argument("--actors", type=_positive, help="with --ray: model replicas (default: one per CPU, "
                                                    "or per GPU with --device cuda)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--view", type=int, help="only the tasks of this Data Manager view (tab) id")
    which.add_argument("--tasks", help="only these task ids, e.g. 1,5,9-20")
    p.add_argument("--limit", type=_positive, help="at most N tasks this run")
    p.add_argument("--report", help="write a JSON report (done, skipped, failed) to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")

    e = sub.add_parser("export", help="COCO keypoints of a project, one annotation per person",
                       description="Export a project as COCO keypoints (annotations) or a COCO results file "
                                   "(predictions).")
    _common(e)
    e.add_argument("--out", required=True, help="output JSON file")
    e.add_argument("--source", choices=("annotations", "predictions"), default="annotations")
    e.add_argument("--model-version", help="with --source predictions: which model version "
                                           "(default: the project's model version)")
    e.add_argument("--weights", default=os.environ.get("CLICKPOSE_WEIGHTS") or None,
                   help="take keypoint names and skeleton from this checkpoint (default: COCO-17)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "label_studio_sdk"):   # a line per request or download would bury the progress
        logging.getLogger(name).setLevel(logging.WARNING)
    if not args.url:
        print("clickpose-ls: no Label Studio URL: pass --url or set LABEL_STUDIO_URL", file=sys.stderr)
        return 2
    try:
        return _prelabel(args) if args.command == "prelabel" else _export(args)
    except KeyboardInterrupt:
        print("clickpose-ls: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError) as exc:   # every error of ours says what went wrong
        print(f"clickpose-ls {args.command}: {exc}", file=sys.stderr)
        return 2


def _prelabel(args: argparse.Namespace) -> int:
    from .ls_client import parse_id_ranges
    from .prelabel import PrelabelConfig, Selection, run
    from .settings import Settings

    selection = Selection(view=args.view, limit=args.limit,
                          task_ids=tuple(parse_id_ranges(args.tasks)) if args.tasks else None)
    if args.actors and not args.ray:
        raise ValueError("--actors needs --ray")
    config = PrelabelConfig(url=args.url.rstrip("/"), api_key=args.api_key, project=args.project,
                            settings=Settings.from_env(), weights=args.weights, device=args.device,
                            precision=args.precision, model_version=args.model_version, chunk=args.chunk, selection=selection,
                            ray=args.ray, actors=args.actors, report_path=args.report,
                            progress=not args.no_progress)
    report = run(config)
    print(report.summary(), file=sys.stderr)
    for item in report.failed[:20]:
        print(f"  task {item['id']}: {item['reason']}", file=sys.stderr)
    if len(report.failed) > 20:
        print(f"  ... and {len(report.failed) - 20} more (see --report)", file=sys.stderr)
    if report.interrupted:
        return 130
    return 1 if report.failed else 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_project

    summary = export_project(url=args.url.rstrip("/"), api_key=args.api_key, project=args.project,
                             out=args.out, source=args.source, model_version=args.model_version,
                             weights=args.weights)
    print(summary.text(), file=sys.stderr)
    for problem in summary.problems[:20]:
        print(f"  {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
