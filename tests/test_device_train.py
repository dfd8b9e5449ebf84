"""scripts/device_train.py, the prepared accelerator run, end to end on the CPU: the same CLI with
`--device cpu` and the tiny preset. A new run, its state in parts no larger than asked, the parts
joined back into a checkpoint that resumes, a second run that continues the first from its parts,
and parts that were damaged on the way refused by name."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clickpose_core.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "device_train.py"
sys.path.insert(0, str(SCRIPT.parent))
import device_train  # noqa: E402


def device_run(tmp: Path, out: str, state: Path, *extra: str, rc: int = 0) -> dict:
    cmd = [sys.executable, str(SCRIPT), "run", "--out", str(tmp / out), "--state", str(state),
           "--work", str(tmp / "work"), "--device", "cpu", "--preset", "tiny", "--batch-size", "2",
           "--num-images", "6", "--size", "128x160", "--synth-workers", "2", "--loader-workers", "0",
           "--minutes", "0.05", "--part-mib", "0.6", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == rc, done.stdout + done.stderr + (tmp / out / "run.log").read_text()
    return json.loads((tmp / out / "summary.json").read_text())


def test_new_run_parts_join_and_resume(tmp_path):
    first = device_run(tmp_path, "out1", tmp_path / "no_state", "--", "--log-every", "1")
    out1 = tmp_path / "out1"
    assert first["resumed_at_step"] is None and first["device"] == "cpu" and first["steps_this_run"] > 0
    parts = sorted(out1.glob("state.part*"))
    assert len(parts) == first["parts"] >= 2
    assert all(p.stat().st_size <= 0.6 * 2 ** 20 for p in parts)
    # every file the device tool can bring back: at most 8, named in letters, digits, '.', '_', '-'
    assert len(list(out1.iterdir())) <= 8

    ckpt = device_train.join(out1, tmp_path / "joined" / "last.pth")
    assert ckpt["bytes"] == sum(p.stat().st_size for p in parts)
    state = torch.load(tmp_path / "joined" / "last.pth", map_location="cpu", weights_only=True)
    assert state["trainer"]["step"] == first["step"] and "optimizer" in state
    assert read_checkpoint(str(tmp_path / "joined" / "last.pth")).model_config().hidden_dim == 32  # tiny

    # the parts and log, committed as a state folder, continue the same run in the next booking
    second = device_run(tmp_path, "out2", out1)
    assert second["resumed_at_step"] == first["step"] and second["step"] > first["step"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "out2" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[0] <= first["step"] < steps[-1]

    # a training command that fails still brings back the last state it had (here: the resumed one)
    failed = device_run(tmp_path, "out3", tmp_path / "out2", "--", "--lr-backbone", "fast", rc=1)
    assert "train failed" in failed["error"] and failed["step"] == second["step"] and failed["steps_this_run"] == 0
    device_train.join(tmp_path / "out3", tmp_path / "joined3" / "last.pth")
    device_train.join(tmp_path / "out2", tmp_path / "joined2" / "last.pth")
    assert (tmp_path / "joined3" / "last.pth").read_bytes() == (tmp_path / "joined2" / "last.pth").read_bytes()


def test_join_refuses_damaged_or_missing_parts(tmp_path):
    blob = tmp_path / "last.pth"
    blob.write_bytes(bytes(range(256)) * 40)
    manifest = device_train.split(blob, tmp_path / "parts", 4000)
    assert [p["bytes"] for p in manifest["parts"]] == [4000, 4000, 2240]
    with pytest.raises(ValueError, match="more than 2 parts"):
        device_train.split(blob, tmp_path / "too_many", 4000, max_parts=2)
    assert not (tmp_path / "too_many").exists()
    device_train.join(tmp_path / "parts", tmp_path / "back.pth")
    assert (tmp_path / "back.pth").read_bytes() == blob.read_bytes()

    damaged = tmp_path / "parts" / "state.part01"
    data = bytearray(damaged.read_bytes())
    data[7] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="state.part01 is not the part the manifest lists"):
        device_train.join(tmp_path / "parts", tmp_path / "never.pth")
    assert not (tmp_path / "never.pth").exists()
    damaged.unlink()
    with pytest.raises(ValueError, match="state.part01 is missing"):
        device_train.join(tmp_path / "parts", tmp_path / "never.pth")
    with pytest.raises(ValueError, match="no manifest.json"):
        device_train.join(tmp_path, tmp_path / "never.pth")


def test_cuda_without_a_gpu_is_a_clear_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)    # as on this CPU machine
    with pytest.raises(SystemExit, match="sees no CUDA device"):
        device_train.main(["run", "--out", str(tmp_path / "o"), "--device", "cuda", "--work", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()     # refused before any data was made


def test_medium_preset_fits_the_weights_limit_and_the_way_back():
    from clickpose_core.config import ClickPoseConfig
    from clickpose_core.training.command import build_model
    from clickpose_core.training.dense import DenseKeypointHead
    cfg = ClickPoseConfig.medium()
    params = sum(p.numel() for p in build_model(cfg).parameters())
    head = sum(p.numel() for p in DenseKeypointHead(cfg.hidden_dim, cfg.num_keypoints).parameters())
    assert 4 * params < 25e6                       # the demo weights limit, float32
    # weights + both AdamW moments, float32, with the heatmap head: the parts the device returns
    assert 12 * (params + head) < device_train.MAX_PARTS * 15.9 * 2 ** 20
    assert (cfg.min_size, cfg.max_size) == (384, 512)   # the synthetic images' own size, not downscaled


def test_missing_pycocotools_without_a_wheel_is_a_clear_refusal(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)     # import fails, as on the device machine
    with pytest.raises(SystemExit, match="pycocotools is not installed .* no wheel of it is in"):
        device_train.pycocotools_path(tmp_path / "no_wheels", tmp_path / "work")
    # a wheel pip cannot install here: its refusal, not a traceback
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "pycocotools-2.0.11-cp312-abi3-win_arm64.whl").write_bytes(b"not a zip")
    with pytest.raises(SystemExit, match="could not install pycocotools-2.0.11-cp312-abi3-win_arm64.whl"):
        device_train.pycocotools_path(tmp_path / "wheels", tmp_path / "work")
