"""Reading and writing model weights without ever unpickling arbitrary objects.

Two file layouts are understood:

* official Click-Pose `.pth` files: `{"model": state_dict, "optimizer": ..., "epoch": ...,
  "args": argparse.Namespace, ["ema_model": state_dict]}`, possibly with `module.` key prefixes,
  or a bare state_dict. They carry no architecture, so they get `ClickPoseConfig.r50()`.
* project files written by `save_checkpoint`: `{"model": state_dict, "config": cfg.to_dict(),
  "meta": {...}}`.

`torch.load(weights_only=True)` is always used. The only class allowed beyond torch's own data
types is `argparse.Namespace` (official files store their `args` in one); it is rebuilt by setting
attributes, never by calling code.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import torch
from torch import nn

from .config import ClickPoseConfig

PathOrState = Union[str, os.PathLike, Mapping[str, Any]]

FORMAT = "clickpose-backend/1"
# Where official and training files keep the weights, in the order they are looked for. The
# official README evaluates with --pretrain_model_path, which reads "model", so "model" comes first.
STATE_KEYS = ("model", "state_dict", "ema_model")
_SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath]
_SHOW = 5  # how many key names an error message lists per category


class CheckpointError(RuntimeError):
    """A weights file that cannot be read, or whose tensors do not fit the model."""


@dataclass
class Checkpoint:
    """What a weights file holds, independent of its wrapping.

    state_dict: key -> tensor with `module.` prefixes removed; config: the project config, or None
    for official files; meta: project metadata or {}; args: the official `args` as a dict or None;
    source: a short description of the file and layout: how it was wrapped (both for messages).
    """
    state_dict: dict[str, torch.Tensor]
    config: ClickPoseConfig | None
    meta: dict[str, Any] = field(default_factory=dict)
    args: dict[str, Any] | None = None
    source: str = "<state dict>"
    layout: str = ""

    @property
    def is_official(self) -> bool:
        return self.config is None

    def model_config(self) -> ClickPoseConfig:
        """The config to build for this file: its own, or the official R50 preset."""
        if self.config is not None:
            return self.config
        cfg = ClickPoseConfig.r50()
        k = (self.args or {}).get("num_body_points", cfg.num_keypoints)
        if k != cfg.num_keypoints:
            raise CheckpointError(f"{self.source}: official checkpoint was trained with "
                                  f"num_body_points={k}; only the 17 COCO keypoints are supported")
        return cfg


def read_checkpoint(path_or_state: PathOrState) -> Checkpoint:
    """Load a file (or take an already loaded dict) and find its state_dict, config and metadata."""
    if isinstance(path_or_state, Mapping):
        return _parse(dict(path_or_state), "<in-memory checkpoint>")
    path = os.fspath(path_or_state)
    return _parse(_safe_load(path), f"checkpoint {path!r}")


def load_checkpoint(model: nn.Module, path_or_state: PathOrState | Checkpoint,
                    strict: bool = True) -> Checkpoint:
    """Copy a checkpoint's tensors into `model` (cast to the model's dtype); return the Checkpoint.

    Raises CheckpointError naming missing, unexpected and mis-shaped keys. Mis-shaped keys are an
    error even with strict=False; missing and unexpected keys are then tolerated.
    """
    ckpt = path_or_state if isinstance(path_or_state, Checkpoint) else read_checkpoint(path_or_state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in ckpt.state_dict]
    unexpected = [k for k in ckpt.state_dict if k not in expected]
    misshaped = [f"{k}: file {list(v.shape)} vs model {list(expected[k].shape)}"
                 for k, v in ckpt.state_dict.items() if k in expected and v.shape != expected[k].shape]
    if misshaped or (strict and (missing or unexpected)):
        raise CheckpointError(_mismatch_message(ckpt, missing, unexpected, misshaped, len(expected)))
    model.load_state_dict(ckpt.state_dict, strict=False)
    return ckpt


def save_checkpoint(path: str | os.PathLike, model: nn.Module,
                    meta: Mapping[str, Any] | None = None) -> None:
    """Write `{"model", "config", "meta"}` atomically; `model.config` must be a ClickPoseConfig.

    meta must hold only plain data (str, int, float, bool, None, lists, tuples, dicts) so that the
    file stays loadable with weights_only=True.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ClickPoseConfig):
        raise TypeError("save_checkpoint needs a model with a ClickPoseConfig `config` attribute")
    meta = dict(meta or {})
    _check_plain(meta, "meta")
    meta.setdefault("format", FORMAT)
    meta.setdefault("torch", str(torch.__version__))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"model": state, "config": config.to_dict(), "meta": meta}
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pth")
    try:
        # mkstemp makes the file private (0600); weights are read by other users, such as the
        # container's non-root user when the file is mounted into it.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)  # readers never see a half-written file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _safe_load(path: str) -> Any:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — torch raises several types for bad files
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e):
            raise CheckpointError(
                f"checkpoint {path!r} stores Python objects that are not plain data "
                f"({_first_line(e)}). Loading it would mean running code from the file, which this "
                "package never does. If you trust the file, re-save just its weights with "
                "torch.save(state_dict) and load that.") from e
        raise CheckpointError(f"checkpoint {path!r} could not be read: {_first_line(e)}") from e


def _parse(obj: Any, source: str) -> Checkpoint:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict at the top level, got {type(obj).__name__}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, wrapper = obj, None
    else:
        wrapper = next((k for k in STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is None:
            raise CheckpointError(f"{source}: no state_dict found; expected one of the keys "
                                  f"{list(STATE_KEYS)} or a flat dict of tensors. {_describe(obj)}")
        state = obj[wrapper]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors in the state_dict: {bad[:_SHOW]}")
    state = {_strip_module(k): v for k, v in state.items()}
    config = _config(obj.get("config"), source) if wrapper is not None else None
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else (
        dict(args) if isinstance(args, Mapping) else None)
    meta = dict(obj.get("meta") or {}) if wrapper is not None else {}
    layout = _describe(obj) + (f" The weights are under {wrapper!r}." if wrapper else "")
    return Checkpoint(state, config, meta, args, source, layout)


def _config(d: Any, source: str) -> ClickPoseConfig | None:
    if d is None:
        return None
    try:
        return ClickPoseConfig.from_dict(dict(d))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: its config is not a valid ClickPoseConfig: {e}") from e


def _strip_module(key: str) -> str:
    # DataParallel / DistributedDataParallel prefix every key with "module.".
    return key[len("module."):] if key.startswith("module.") else key


def _mismatch_message(ckpt: Checkpoint, missing: list[str], unexpected: list[str],
                      misshaped: list[str], model_keys: int) -> str:
    parts = [f"{ckpt.source} does not fit the model ({model_keys} keys in the model, "
             f"{len(ckpt.state_dict)} tensors in the file)."]
    for name, keys in (("missing from the file", missing), ("unexpected in the file", unexpected),
                       ("with a different shape", misshaped)):
        if keys:
            more = f" ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
            parts.append(f"{len(keys)} keys {name}: {keys[:_SHOW]}{more}.")
    parts.append(ckpt.layout)
    if ckpt.config is None:
        parts.append("The file has no config, so the official R50 architecture was assumed.")
    return " ".join(parts)


def _describe(obj: Mapping[str, Any]) -> str:
    keys = list(obj)[:10]
    tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
    return f"The file's top-level keys are {keys} ({len(obj)} in all, {tensors} of them tensors)."


def _check_plain(value: Any, where: str) -> None:
    # Exact types: a str subclass (e.g. torch.__version__) would not load under weights_only.
    if value is None or type(value) in (str, int, float, bool):
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if type(value) is dict:
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be str, got {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not plain data (str, int, float, bool, "
                    "None, list, tuple, dict)")


def _first_line(e: BaseException) -> str:
    text = str(e)
    # torch's weights-only message is long; the line naming the rejected global is the useful one.
    for line in text.splitlines():
        if "GLOBAL" in line:
            return line.strip().split(" was not")[0].replace("WeightsUnpickler error: ", "")
    return text.splitlines()[0] if text else type(e).__name__


def build_from_checkpoint(path_or_state: PathOrState, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Checkpoint]:
    """Build the architecture a checkpoint needs, load it strictly, and return (model.eval(), ckpt)."""
    from . import build_model  # late import: the model package imports heavier modules

    ckpt = read_checkpoint(path_or_state)
    model = build_model(ckpt.model_config()).to(dtype)
    load_checkpoint(model, ckpt, strict=True)
    return model.to(device).eval(), ckpt
