"""Which weights file to use, where it came from, what licence it carries, and how to fetch it.

Official Click-Pose weights (IDEA License 1.0: non-commercial research use only) are preferred
when present; otherwise the project's demo weights, trained on synthetic images, are used.
Every load is logged at WARNING level with the licence (`announce`) so nobody ships the wrong file.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

IDEA_LICENCE = "IDEA License 1.0 (non-commercial research use only)"
DEMO_FILE = "clickpose_demo_synthetic.pth"


@dataclass(frozen=True)
class OfficialWeights:
    """One file published by the Click-Pose authors (links from their README)."""
    name: str
    filename: str
    version_name: str
    drive_id: str
    sha256: str | None = None  # the authors publish none; pass expected_sha256 to pin one

    @property
    def url(self) -> str:
        # The usercontent endpoint with confirm=t skips Drive's "cannot scan for viruses" page.
        return (f"https://drive.usercontent.google.com/download?id={self.drive_id}"
                "&export=download&confirm=t")

    @property
    def page(self) -> str:
        return f"https://drive.google.com/file/d/{self.drive_id}/view"


OFFICIAL: dict[str, OfficialWeights] = {
    "interactive": OfficialWeights("interactive", "ClickPose_interactive_R50.pth",
                                   "clickpose-r50-interactive", "184RIVxFVrDho4Nw5Yquh6fedTKpsZVYX"),
    "model_only": OfficialWeights("model_only", "ClickPose_model_only_R50.pth",
                                  "clickpose-r50-model-only", "1_rp12m0fkpSc7LQ1oXeifdt8SbwcSHtS"),
}


class WeightsNotFound(FileNotFoundError):
    """No usable weights file; the message says how to get one."""


@dataclass(frozen=True)
class WeightsInfo:
    """Identity of a weights file: path, kind ('official' | 'demo' | 'custom'), sha256, licence."""
    path: str
    kind: str
    sha256: str
    licence: str
    model_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_weights(path: str | os.PathLike, licence: str | None = None) -> WeightsInfo:
    """Identify a weights file by name and content hash.

    `licence` overrides the default for custom files (e.g. taken from a checkpoint's meta).
    """
    path = os.fspath(path)
    digest = file_sha256(path)
    base = os.path.basename(path)
    official = next((w for w in OFFICIAL.values() if w.filename == base), None)
    if official is not None:
        return WeightsInfo(path, "official", digest, IDEA_LICENCE, f"{official.version_name}@{digest[:12]}")
    if base == DEMO_FILE:
        return WeightsInfo(path, "demo", digest, licence or "see weights/README.md",
                           f"clickpose-demo@{digest[:12]}")
    stem = os.path.splitext(base)[0]
    return WeightsInfo(path, "custom", digest, licence or "unknown (custom weights)",
                       f"clickpose-custom-{stem}@{digest[:12]}")


# Default weights live in the checkout's weights/ folder, found from this package's own location,
# so tools started from any folder (cvat-cli, cron jobs) find them; ./weights is the fallback for an
# install that copied the package away from its checkout (a wheel in site-packages, the Dockerfile).
CHECKOUT_WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


def resolve_default(weights_dir: str | os.PathLike | None = None) -> WeightsInfo:
    """The official interactive R50 file if present, else the bundled demo weights.

    weights_dir None searches CHECKOUT_WEIGHTS_DIR, then ./weights. Only resolves; whoever loads
    the file calls `announce` (Predictor.from_checkpoint does).
    """
    folders = [os.fspath(weights_dir)] if weights_dir is not None else list(
        dict.fromkeys([CHECKOUT_WEIGHTS_DIR, os.path.abspath("weights")]))
    for folder in folders:
        for candidate in (OFFICIAL["interactive"].filename, DEMO_FILE):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return describe_weights(path)
    where = " or ".join(repr(os.path.abspath(f)) for f in folders)
    raise WeightsNotFound(
        f"no weights in {where}: expected {OFFICIAL['interactive'].filename} "
        f"(official, {IDEA_LICENCE}) or {DEMO_FILE} (project demo weights). Get the official file "
        f"with `python -c \"from clickpose_core.weights import download_official; "
        f"download_official('interactive', '{folders[0]}')\"` or from {OFFICIAL['interactive'].page}, "
        "or pass an explicit weights path. See weights/README.md.")


def announce(info: WeightsInfo) -> None:
    """Log, loudly, which weights are in use and under which licence."""
    logger.warning("Click-Pose weights: %s (%s, %s), licence: %s", info.path, info.kind,
                   info.model_version, info.licence)


def download_official(name: str, dest_dir: str | os.PathLike = "weights", *,
                      url: str | None = None, expected_sha256: str | None = None,
                      timeout: float = 60.0, chunk_size: int = 1 << 20) -> str:
    """Download an official file (`name` in OFFICIAL) into dest_dir; return its path.

    Data goes to `<file>.part` first and is renamed only once complete and verified, so an
    interrupted download never looks like a finished one; a later call resumes the .part file with
    an HTTP Range request when the server allows it. `url` overrides the source (mirrors, tests).
    """
    import requests  # late imports: only downloads need them
    from tqdm import tqdm

    if name not in OFFICIAL:
        raise ValueError(f"unknown official weights {name!r}; choose one of {sorted(OFFICIAL)}")
    spec = OFFICIAL[name]
    os.makedirs(dest_dir, exist_ok=True)
    final = os.path.join(os.fspath(dest_dir), spec.filename)
    part = final + ".part"
    logger.warning("Downloading %s: %s. Licence: %s", spec.filename, spec.page, IDEA_LICENCE)
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url or spec.url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code == 416:  # the .part file already holds everything
            r.close()
        else:
            r.raise_for_status()
            if "text/html" in r.headers.get("Content-Type", ""):
                raise RuntimeError(f"the server sent a web page instead of {spec.filename} (Google "
                                   f"Drive quota or sign-in page?). Download it by hand from "
                                   f"{spec.page} into {dest_dir}.")
            resumed = r.status_code == 206
            mode = "ab" if resumed else "wb"  # a 200 answer restarts from byte 0
            total = int(r.headers.get("Content-Length", 0)) + (have if resumed else 0)
            with open(part, mode) as f, tqdm(total=total or None, initial=have if resumed else 0,
                                             unit="B", unit_scale=True, desc=spec.filename) as bar:
                for chunk in r.iter_content(chunk_size):
                    f.write(chunk)
                    bar.update(len(chunk))
    _verify(part, expected_sha256 or spec.sha256)
    os.replace(part, final)
    return final


def _verify(path: str, expected: str | None) -> None:
    digest = file_sha256(path)
    if expected is None:
        logger.warning("%s sha256 %s (no published hash to compare with)", path, digest)
        return
    if digest != expected.lower():
        os.unlink(path)  # a corrupt .part must not be resumed
        raise RuntimeError(f"sha256 mismatch for {path}: got {digest}, expected {expected}; "
                           "the partial file was deleted, run the download again")
