"""Fetch a task's image safely and decode it the way the browser shows it.

Downloads go through label-studio-sdk's `get_local_path` (it knows `/data/upload`, local files,
the storage proxy, cloud-storage presign by task id, and the token kinds), but every HTTP request
it makes is sent through `GuardedSession`, which

* only talks to the Label Studio host and the hosts in ALLOWED_IMAGE_HOSTS (also after a
  redirect), so a task cannot make the backend call other internal addresses;
* stops reading after MAX_IMAGE_BYTES and sets a timeout on every request.

Decoding checks the pixel count before decoding and applies the EXIF orientation, because the
browser displays the transposed image and region percentages refer to what it displays.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlparse

import numpy as np
import requests
from PIL import Image, UnidentifiedImageError
from label_studio_sdk._extensions.label_studio_tools.core.utils import io as ls_io

from clickpose_core.image import ImageError as CoreImageError, load_image

logger = logging.getLogger(__name__)

_CLOUD_PREFIXES = ("s3:", "gs:", "azure-blob:")
_LS_PATH_PREFIXES = ("/data/", "data/", "/upload/", "upload/", "/storage-data/", "storage-data/")


class ImageError(ValueError):
    """The task's image cannot be fetched or decoded; the message is safe to show the user."""


def _host_port(url: str) -> tuple[str, int | None]:
    parsed = urlparse(url)
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    return (parsed.hostname or "").lower(), port


@dataclass(frozen=True)
class HostPolicy:
    """Which (host, port) pairs image downloads may reach."""

    allowed: frozenset[tuple[str, int | None]]

    @classmethod
    def build(cls, label_studio_url: str, extra_hosts: tuple[str, ...]) -> "HostPolicy":
        allowed: set[tuple[str, int | None]] = set()
        if label_studio_url:
            allowed.add(_host_port(label_studio_url))
        for entry in extra_hosts:
            host, _, port = entry.partition(":")
            allowed.add((host.lower(), int(port) if port.isdigit() else None))
        return cls(frozenset(allowed))

    def permits(self, url: str) -> bool:
        if urlparse(url).scheme not in ("http", "https"):
            return False
        host, port = _host_port(url)
        return (host, port) in self.allowed or (host, None) in self.allowed


class GuardedSession(requests.Session):
    """A requests session that enforces the host policy, a timeout and a byte cap."""

    def __init__(self, policy: HostPolicy, max_bytes: int, timeout: float, max_redirects: int = 3) -> None:
        super().__init__()
        self.policy, self.max_bytes, self.timeout, self.max_redirects = policy, max_bytes, timeout, max_redirects
        self.trust_env = False  # never route through proxies picked up from the environment

    def request(self, method, url, **kwargs):  # type: ignore[override]
        kwargs["allow_redirects"] = False  # followed below, each hop checked against the policy
        kwargs["timeout"] = self.timeout
        kwargs["stream"] = True
        for _ in range(self.max_redirects + 1):
            if not self.policy.permits(url):
                raise ImageError(
                    f"refusing to fetch an image from {urlparse(url).netloc or url[:40]!r}: only the Label "
                    "Studio host and ALLOWED_IMAGE_HOSTS are allowed")
            resp = super().request(method, url, **kwargs)
            if resp.is_redirect and "location" in resp.headers:
                url = urljoin(url, resp.headers["location"])
                resp.close()
                if urlparse(url).netloc != urlparse(resp.url).netloc:
                    kwargs.get("headers", {}).pop("Authorization", None)  # never hand the token to another host
                continue
            return self._read_capped(resp)
        raise ImageError("too many redirects while fetching the image")

    def _read_capped(self, resp: requests.Response) -> requests.Response:
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            resp.close()
            raise ImageError(f"the image is larger than MAX_IMAGE_BYTES ({self.max_bytes} bytes)")
        chunks, total = [], 0
        for chunk in resp.iter_content(64 * 1024):
            total += len(chunk)
            if total > self.max_bytes:
                resp.close()
                raise ImageError(f"the image is larger than MAX_IMAGE_BYTES ({self.max_bytes} bytes)")
            chunks.append(chunk)
        resp._content = b"".join(chunks)  # later `.content` reads this instead of the socket
        resp._content_consumed = True
        return resp


@dataclass(frozen=True)
class FetchLimits:
    """What one image download may cost."""

    max_bytes: int = 20 * 1024 * 1024    # body size
    max_pixels: int = 40_000_000         # width x height, checked before decoding
    timeout: float = 10.0                # seconds per connect and per read


@dataclass(frozen=True)
class ImageSource:
    """Where images may be downloaded from, with which token, within which limits.

    Built by the serving `Settings` (from the environment and `/setup`) and by the batch tools
    (from their flags), so both adapters fetch through the same guarded loader.
    """

    label_studio_url: str = ""           # base URL: `/data/...` paths and cloud presign resolve here
    token: str = field(default="", repr=False)   # Label Studio token sent to label_studio_url only
    allowed_hosts: tuple[str, ...] = ()  # extra `host[:port]` entries images may come from
    limits: FetchLimits = FetchLimits()


class ImageLoader:
    """Loads task images from one `ImageSource` (one request, or one batch job)."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source
        self.hostname = source.label_studio_url.rstrip("/")
        self.token = source.token
        self.limits = source.limits
        self.policy = HostPolicy.build(self.hostname, source.allowed_hosts)
        self.cache_dir = tempfile.mkdtemp(prefix="clickpose-img-")
        # A path that never exists: disables the SDK's shortcut of reading LS's own upload folder.
        self._no_local_uploads = os.path.join(self.cache_dir, "no-local-uploads")

    def check_url(self, url: object) -> str:
        if not isinstance(url, str) or not url.strip():
            raise ImageError("the task has no image URL in the key the labeling config names")
        url = url.strip()
        if url.startswith(_CLOUD_PREFIXES) or url.startswith(_LS_PATH_PREFIXES):
            if not self.hostname:
                raise ImageError("set LABEL_STUDIO_URL (or connect from Label Studio) to fetch Label Studio files")
            return url
        if urlparse(url).scheme in ("http", "https"):
            if not self.policy.permits(url):
                raise ImageError(
                    f"refusing to fetch an image from {urlparse(url).netloc!r}: only the Label Studio host and "
                    "ALLOWED_IMAGE_HOSTS are allowed")
            return url
        raise ImageError("unsupported image URL; expected a Label Studio file, an http(s) URL or a cloud URI")

    def fetch_bytes(self, url: str, task_id: int | None) -> bytes:
        url = self.check_url(url)
        session = GuardedSession(self.policy, self.limits.max_bytes, self.limits.timeout)
        try:
            with ls_io.http_session(session):
                path = ls_io.get_local_path(url, cache_dir=self.cache_dir, hostname=self.hostname,
                                            access_token=self.token, task_id=task_id,
                                            image_dir=self._no_local_uploads)
        except ImageError:
            raise
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            raise ImageError(f"Label Studio answered HTTP {code} for the task image") from None
        except requests.Timeout:
            raise ImageError(f"fetching the image timed out after {self.limits.timeout:g} s") from None
        except (requests.RequestException, OSError, FileNotFoundError, ValueError) as exc:
            raise ImageError(f"cannot fetch the task image ({type(exc).__name__})") from None
        finally:
            session.close()
        try:
            size = os.path.getsize(path)
            if size > self.limits.max_bytes:  # a local-storage file never went through the session
                raise ImageError(f"the image is larger than MAX_IMAGE_BYTES ({self.limits.max_bytes} bytes)")
            with open(path, "rb") as f:
                return f.read()
        finally:
            if os.path.dirname(os.path.abspath(path)) == self.cache_dir:
                os.unlink(path)  # each image is decoded once; the predictor caches what it needs

    def load(self, url: str, task_id: int | None) -> np.ndarray:
        return decode_image(self.fetch_bytes(url, task_id), self.limits.max_pixels)

    def close(self) -> None:
        try:
            os.rmdir(self.cache_dir)
        except OSError:
            pass


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes -> HxWx3 uint8 RGB as displayed (EXIF orientation applied, by clickpose_core)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size  # read from the header, before any pixel is decoded
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ImageError(f"the task image cannot be decoded ({type(exc).__name__})") from None
    if w * h > max_pixels:
        raise ImageError(f"the image has {w}x{h} pixels, more than MAX_IMAGE_PIXELS ({max_pixels})")
    try:
        return load_image(data)
    except CoreImageError as exc:
        raise ImageError(f"the task image cannot be decoded: {exc}") from None
