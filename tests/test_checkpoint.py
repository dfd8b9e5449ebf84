"""Checkpoint reading/writing: every official wrapping, safe loading, clear mismatch errors."""
import argparse
import os

import pytest
import torch
from torch import nn

from clickpose_core.checkpoint import (CheckpointError, load_checkpoint, read_checkpoint,
                                       save_checkpoint)
from clickpose_core.config import ClickPoseConfig


class Toy(nn.Module):
    """Tied heads like the official model: one ModuleList reachable under two names."""

    def __init__(self, width=3):
        super().__init__()
        self.config = ClickPoseConfig.tiny()
        self.body = nn.Linear(2, width)
        self.register_buffer("running_mean", torch.zeros(width))
        self.decoder = nn.Module()
        self.decoder.bbox_embed = nn.ModuleList([nn.Linear(width, 4)])
        self.bbox_embed = self.decoder.bbox_embed


def _filled(seed=0):
    torch.manual_seed(seed)
    m = Toy()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
        m.running_mean.normal_()
    return m


def _assert_same_weights(a, b):
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va.to(vb.dtype), vb), ka


def test_state_dict_has_alias_keys_and_strict_load_works():
    src = _filled()
    assert "bbox_embed.0.weight" in src.state_dict() and "decoder.bbox_embed.0.weight" in src.state_dict()
    dst = Toy()
    load_checkpoint(dst, src.state_dict())
    _assert_same_weights(src, dst)


@pytest.mark.parametrize("wrap", ["model", "ema_model", "state_dict", "flat", "module_prefix"])
def test_official_wrappings_load(tmp_path, wrap):
    src = _filled()
    sd = src.state_dict()
    if wrap == "flat":
        payload = sd
    elif wrap == "module_prefix":
        payload = {"model": {"module." + k: v for k, v in sd.items()}}
    else:
        payload = {wrap: sd}
    if wrap == "model":  # the full official training layout, Namespace args included
        opt = torch.optim.AdamW(src.parameters())
        payload.update(optimizer=opt.state_dict(), epoch=39,
                       lr_scheduler=torch.optim.lr_scheduler.MultiStepLR(opt, [30]).state_dict(),
                       args=argparse.Namespace(num_body_points=17, lr=1e-4, coco_path="/data"))
    path = tmp_path / "ck.pth"
    torch.save(payload, path)
    dst = Toy()
    ckpt = load_checkpoint(dst, path)
    _assert_same_weights(src, dst)
    assert ckpt.is_official and ckpt.model_config() == ClickPoseConfig.r50()
    if wrap == "model":
        assert ckpt.args["num_body_points"] == 17 and ckpt.args["coco_path"] == "/data"


def test_model_wins_over_ema_when_both_present():
    a, b = _filled(0), _filled(1)
    dst = Toy()
    load_checkpoint(dst, {"model": a.state_dict(), "ema_model": b.state_dict()})
    _assert_same_weights(a, dst)


class _Evil:
    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    marker = tmp_path / "executed"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"model": _filled().state_dict(), "extra": evil}, path)
    with pytest.raises(CheckpointError, match=r"not plain data \(Unsupported global: GLOBAL (io|builtins)\.open\)"):
        read_checkpoint(path)
    assert not marker.exists()


def test_mismatch_error_names_keys_counts_and_layout():
    src = _filled().state_dict()
    src.pop("body.bias")
    src["extra.weight"] = torch.zeros(1)
    src["body.weight"] = torch.zeros(5, 2)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(Toy(), {"model": src, "epoch": 1})
    msg = str(err.value)
    assert "1 keys missing from the file: ['body.bias']" in msg
    assert "1 keys unexpected in the file: ['extra.weight']" in msg
    assert "body.weight: file [5, 2] vs model [3, 2]" in msg
    assert "top-level keys are ['model', 'epoch']" in msg and "under 'model'" in msg
    assert "official R50 architecture was assumed" in msg


def test_long_key_lists_are_truncated_with_count():
    sd = {f"junk.{i}": torch.zeros(1) for i in range(12)}
    sd.update(_filled().state_dict())
    with pytest.raises(CheckpointError, match=r"12 keys unexpected .*\(\+7 more\)"):
        load_checkpoint(Toy(), sd)


def test_non_strict_tolerates_missing_but_not_misshaped():
    src = _filled().state_dict()
    src.pop("body.bias")
    dst = Toy()
    load_checkpoint(dst, dict(src), strict=False)
    assert torch.equal(dst.body.weight, src["body.weight"])
    src["body.weight"] = torch.zeros(5, 2)
    with pytest.raises(CheckpointError, match="different shape"):
        load_checkpoint(Toy(), src, strict=False)


def test_float32_file_loads_into_float64_model():
    src = _filled()
    dst = Toy().double()
    load_checkpoint(dst, src.state_dict())
    assert dst.body.weight.dtype == torch.float64
    assert torch.equal(dst.body.weight, src.body.weight.double())


def test_project_checkpoint_roundtrip(tmp_path):
    src = _filled()
    path = tmp_path / "sub" / "ours.pth"
    save_checkpoint(path, src, {"dataset": "synthetic", "steps": 10, "licence": "Apache-2.0"})
    assert os.listdir(path.parent) == ["ours.pth"]  # no temp file left behind
    assert os.stat(path).st_mode & 0o777 == 0o644     # readable by other users (a container's), not 0600
    ckpt = read_checkpoint(path)
    assert not ckpt.is_official and ckpt.model_config() == src.config
    assert ckpt.meta["steps"] == 10 and ckpt.meta["format"] == "clickpose-backend/1"
    dst = Toy()
    load_checkpoint(dst, ckpt)
    _assert_same_weights(src, dst)


def test_save_rejects_non_plain_meta_and_models_without_config(tmp_path):
    with pytest.raises(TypeError, match=r"meta\['when'\]: object is not plain data"):
        save_checkpoint(tmp_path / "a.pth", _filled(), {"when": object()})
    with pytest.raises(TypeError, match="ClickPoseConfig"):
        save_checkpoint(tmp_path / "b.pth", nn.Linear(1, 1))
    assert not (tmp_path / "a.pth").exists()


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        read_checkpoint(tmp_path / "junk.pth")
    torch.save({"epoch": 3, "notes": "x"}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match=r"no state_dict found.*\['epoch', 'notes'\]"):
        read_checkpoint(tmp_path / "nostate.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_checkpoint(tmp_path / "list.pth")


def test_official_with_other_keypoint_count_is_refused():
    ckpt = read_checkpoint({"model": _filled().state_dict(),
                            "args": argparse.Namespace(num_body_points=14)})
    with pytest.raises(CheckpointError, match="num_body_points=14"):
        ckpt.model_config()


def test_bad_project_config_is_reported():
    with pytest.raises(CheckpointError, match="not a valid ClickPoseConfig.*bogus"):
        read_checkpoint({"model": _filled().state_dict(), "config": {"bogus": 1}})
