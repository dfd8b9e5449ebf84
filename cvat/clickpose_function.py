"""Click-Pose for `cvat-cli task auto-annotate TASK --function-file cvat/clickpose_function.py`.

cvat-cli runs this file without its folder on sys.path, so the code lives in the installed
`clickpose_cvat` package (`scripts/bootstrap.sh cvat`, or `pip install -c constraints.txt -e ".[cvat]"`);
this file only re-exports its factory.
Parameters (all optional): -p weights=str:PATH -p device=str:cuda -p score_threshold=float:0.3
-p label=str:person -p box_label=str:person-box
"""
from clickpose_cvat.function import create

__all__ = ["create"]
