"""Package boundaries: clickpose_core knows nothing of Label Studio, needs no torchvision."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "clickpose_core"
FORBIDDEN = ("label_studio", "label_studio_ml", "label_studio_sdk", "backend", "torchvision")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_core_imports_no_label_studio_backend_or_torchvision():
    offenders = {str(p.relative_to(CORE)): sorted(m for m in imported_modules(p) if m.split(".")[0] in FORBIDDEN)
                 for p in CORE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(offenders) > 20   # the walk really saw the package


def test_importing_the_core_loads_none_of_them():
    code = ("import sys, clickpose_core, clickpose_core.predictor, clickpose_core.evaluation, "
            "clickpose_core.training, clickpose_core.synth; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=CORE.parent)
    assert out.stdout.strip() == "[]"
