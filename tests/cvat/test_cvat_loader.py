"""cvat/clickpose_function.py loaded the way `cvat-cli task auto-annotate` loads it: cvat-cli 2.80.0's
own argument parser (`-p name=type:value`) and its FunctionLoader (the file is executed as
`__cvat_function__`, its folder not on sys.path)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import pytest
from cvat_cli._internal.commands_all import COMMANDS
from cvat_cli._internal.common import FunctionLoader, configure_common_arguments

from clickpose_core.checkpoint import CheckpointError
from clickpose_core.weights import CHECKOUT_WEIGHTS_DIR
from clickpose_cvat.function import ClickPoseFunction
from cvat_fixtures import REPO

FUNCTION_FILE = REPO / "cvat" / "clickpose_function.py"


def cli_load(*argv: str):
    """Parse a cvat-cli command line and load its function as the command would."""
    parser = argparse.ArgumentParser()
    configure_common_arguments(parser)
    COMMANDS.configure_parser(parser)
    args = parser.parse_args(list(argv))
    return args, FunctionLoader(args.function_module, args.function_file, args.function_parameters).load()


def test_file_loads_with_typed_parameters(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, function = cli_load(
        "task", "auto-annotate", "12", "--function-file", str(FUNCTION_FILE),
        "-p", f"weights=str:{checkpoint}", "-p", "score_threshold=float:0.5",
        "-p", "box_label=str:person-box", "-p", "label=str:player", "--conf-threshold", "0.75")
    assert args.function_parameters == {"weights": str(checkpoint), "score_threshold": 0.5,
                                        "box_label": "person-box", "label": "player"}
    assert isinstance(function, ClickPoseFunction)
    assert [label.name for label in function.spec.labels] == ["player", "person-box"]
    assert function.score_threshold == 0.5
    assert function.predictor.weights_info["path"] == str(checkpoint)


def test_file_loads_without_parameters_from_any_folder(tmp_path):
    """No -p at all (create() gets no arguments), in a fresh interpreter started in a folder with no
    weights/ and nothing of the checkout on sys.path, as a user's `cvat-cli` is: the default
    weights come from the checkout's weights/ folder."""
    code = textwrap.dedent(f"""
        import argparse, json, sys
        from cvat_cli._internal.commands_all import COMMANDS
        from cvat_cli._internal.common import FunctionLoader, configure_common_arguments
        parser = argparse.ArgumentParser()
        configure_common_arguments(parser)
        COMMANDS.configure_parser(parser)
        args = parser.parse_args(["task", "auto-annotate", "3", "--function-file", {str(FUNCTION_FILE)!r}])
        function = FunctionLoader(args.function_module, args.function_file, args.function_parameters).load()
        print(json.dumps({{"weights": function.predictor.weights_info, "sys_path": sys.path,
                          "sublabels": [s.name for s in function.spec.labels[0].sublabels]}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not {str(REPO), str(REPO / "cvat")} & set(result["sys_path"])
    assert os.path.dirname(result["weights"]["path"]) == CHECKOUT_WEIGHTS_DIR == str(REPO / "weights")
    assert result["weights"]["kind"] in ("official", "demo")
    assert result["sublabels"][0] == "nose" and len(result["sublabels"]) == 17


def test_agent_commands_load_it_too(checkpoint):
    _, function = cli_load("function", "create-native", "Click-Pose", "--function-file", str(FUNCTION_FILE),
                           "-p", f"weights=str:{checkpoint}")
    assert isinstance(function, ClickPoseFunction)
    _, function = cli_load("function", "run-agent", "5", "--function-module", "clickpose_cvat.function",
                           "-p", f"weights=str:{checkpoint}", "-p", "device=str:cpu")
    assert isinstance(function, ClickPoseFunction)


def test_bad_parameters_fail_clearly(checkpoint):
    with pytest.raises(TypeError, match="unexpected keyword argument 'treshold'"):
        cli_load("task", "auto-annotate", "1", "--function-file", str(FUNCTION_FILE), "-p", "treshold=float:0.5")
    with pytest.raises(CheckpointError, match="checkpoint 'nope.pth' does not exist"):
        cli_load("task", "auto-annotate", "1", "--function-file", str(FUNCTION_FILE), "-p", "weights=str:nope.pth")
    with pytest.raises(ValueError, match="score_threshold must be between 0 and 1"):
        cli_load("task", "auto-annotate", "1", "--function-file", str(FUNCTION_FILE),
                 "-p", f"weights=str:{checkpoint}", "-p", "score_threshold=float:3")
