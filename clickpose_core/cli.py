"""`clickpose` command line: one sub-command per module, loaded lazily.

Each sub-command module exposes `add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("clickpose_core.commands.predict", "detect people in an image; write JSON and a PNG"),
    "synth": ("clickpose_core.synth.command", "generate a synthetic COCO-format keypoint dataset"),
    "train": ("clickpose_core.training.command", "train or fine-tune on a COCO-format keypoint dataset"),
    "eval": ("clickpose_core.evaluation.command", "keypoint AP, AP vs clicks, NoC and box AP"),
    "bench": ("clickpose_core.commands.bench", "time the full forward against one refinement round"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clickpose", description="Click-Pose interactive keypoints")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the module that will run: keeps `--help` fast
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
