"""Fetch a task's image safely and decode it the way the browser shows it.

Downloads go through label-studio-sdk's `get_local_path` (it knows `/data/upload`, local files,
the storage proxy, cloud-storage presign by task id, and the token kinds), but every HTTP request
it makes is sent through `GuardedSession`, which

* parses each URL once, with the parser the HTTP client connects with (urllib3's `parse_url`),
  refuses what another parser could read differently (backslashes, credentials, bad ports),
  checks the host against the policy and sends exactly the URL it checked, hop by hop across
  redirects, so a task cannot make the backend call other internal addresses;
* decides the `Authorization` header itself: the source's token goes to the Label Studio origin
  only (the SDK would otherwise fall back to the process's LABEL_STUDIO_API_KEY);
* stops reading after `max_bytes`, sets a timeout on every connect and read, and closes the
  sockets when the whole download passes its `deadline` (a slow drip cannot hold a request).

Decoding checks the pixel count before decoding and applies the EXIF orientation, because the
browser displays the transposed image and region percentages refer to what it displays.
"""
from __future__ import annotations

import io
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

import numpy as np
import requests
from PIL import Image, UnidentifiedImageError
from label_studio_sdk._extensions.label_studio_tools.core.utils import io as ls_io
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import LocationParseError, ReadTimeoutError
from urllib3.util import parse_url

from clickpose_core.image import ImageError as CoreImageError, load_image

logger = logging.getLogger(__name__)

_CLOUD_PREFIXES = ("s3:", "gs:", "azure-blob:")
_LS_PATH_PREFIXES = ("/data/", "data/", "/upload/", "upload/", "/storage-data/", "storage-data/")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ImageError(ValueError):
    """The task's image cannot be fetched or decoded; the message is safe to show the user."""


@dataclass(frozen=True)
class Origin:
    """scheme, host (lower case, IPv6 in brackets) and port of a URL, as the HTTP client reads it."""

    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        return self.host if self.port == _DEFAULT_PORTS[self.scheme] else f"{self.host}:{self.port}"


def parse_http_url(url: object) -> tuple[Origin, str]:
    """(origin, canonical URL) of an http(s) URL; ImageError for anything ambiguous.

    The canonical URL is rebuilt from urllib3's parse and taken to the bytes requests sends, so
    the URL that is checked is the URL that is requested: `http://a:1\\@b:2/` is refused, not read as host `b` by one parser
    and `a` by another.
    """
    if not isinstance(url, str):
        raise ImageError("the image URL must be a string")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise ImageError("the image URL is not valid text (unpaired surrogate)") from None
    if "\\" in url or any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise ImageError("the image URL holds a backslash or a control character; refusing an address "
                         "that clients could read differently")
    url = url.replace(" ", "%20")   # what the HTTP client would send; a space in the host stays invalid
    try:
        parts = parse_url(url)
    except (LocationParseError, ValueError):
        raise ImageError(f"the image URL {url[:80]!r} has no valid host or port") from None
    scheme = (parts.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS:
        raise ImageError("unsupported image URL; expected a Label Studio file, an http(s) URL or a cloud URI")
    if parts.auth is not None or "@" in (url.split("/", 3)[2] if url.count("/") >= 2 else ""):
        raise ImageError("image URLs with credentials (user:password@host) are refused")
    if not parts.host:
        raise ImageError(f"the image URL {url[:80]!r} has no host")
    if parts.port == 0:   # `parts.port or default` below would quietly read it as the default port
        raise ImageError("the image URL names port 0, which no server listens on")
    origin = Origin(scheme, parts.host.lower(), parts.port or _DEFAULT_PORTS[scheme])
    rebuilt = f"{scheme}://{origin.netloc}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    sent = _as_sent(rebuilt)
    if sent is None:
        raise ImageError(f"the image URL {url[:80]!r} has no valid host or port")
    parts = parse_url(sent)
    if Origin(parts.scheme or "", (parts.host or "").lower(), parts.port or _DEFAULT_PORTS[scheme]) != origin:
        raise ImageError("the image URL reads as two different hosts; refusing an address that clients could "
                         "read differently")
    return origin, sent


def _as_sent(url: str) -> str | None:
    """The URL requests puts on the wire for `url` (it re-quotes: `%41` -> `A`, `%2E%2E` -> `..`,
    and a second pass drops the `..`), taken to its fixed point so that checking it and sending
    it see the same bytes; None when requests cannot send it."""
    for _ in range(3):
        prepared = requests.models.PreparedRequest()
        try:
            prepared.prepare_url(url, None)
        except (requests.RequestException, LocationParseError, ValueError):
            return None
        if prepared.url == url:
            return url
        url = prepared.url
    return None


@dataclass(frozen=True)
class HostPolicy:
    """Which (host, port) pairs image downloads may reach; port None admits every port of a host."""

    allowed: frozenset[tuple[str, int | None]]

    @classmethod
    def build(cls, label_studio_url: str, extra_hosts: tuple[str, ...]) -> "HostPolicy":
        allowed: set[tuple[str, int | None]] = set()
        if label_studio_url:
            origin, _ = parse_http_url(label_studio_url)
            allowed.add((origin.host, origin.port))
        for entry in extra_hosts:
            host, port = _host_entry(entry)
            allowed.add((host, port))
        return cls(frozenset(allowed))

    def permits(self, url: str) -> bool:
        try:
            origin, _ = parse_http_url(url)
        except ImageError:
            return False
        return (origin.host, origin.port) in self.allowed or (origin.host, None) in self.allowed

    def admit(self, url: object) -> tuple[Origin, str]:
        """(origin, canonical URL) of a URL the policy permits; ImageError naming the host otherwise."""
        origin, canonical = parse_http_url(url)
        if not self.permits(canonical):
            raise ImageError(f"refusing to fetch an image from {origin.netloc!r}: only the Label Studio host and "
                             "ALLOWED_IMAGE_HOSTS are allowed")
        return origin, canonical


def _host_entry(entry: str) -> tuple[str, int | None]:
    """An ALLOWED_IMAGE_HOSTS entry `host[:port]` as the policy stores it."""
    try:
        parts = parse_url("http://" + entry.strip())
    except (LocationParseError, ValueError):
        raise ImageError(f"ALLOWED_IMAGE_HOSTS entry {entry!r} is not host[:port]") from None
    if not parts.host or parts.auth or (parts.path not in (None, "", "/")):
        raise ImageError(f"ALLOWED_IMAGE_HOSTS entry {entry!r} is not host[:port]")
    return parts.host.lower(), parts.port


class _Deadline:
    """Shuts down every socket of one download when its total time is up.

    Per-read timeouts alone let a server drip one byte per read forever; closing the socket from
    a timer interrupts a read that is blocked right now.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections register their socket with a `_Deadline`."""

    def __init__(self, deadline: _Deadline) -> None:
        self.deadline = deadline
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[override]
        super().init_poolmanager(*args, **kwargs)
        deadline = self.deadline

        def watched(base: type) -> type:
            def connect(conn) -> None:
                base.connect(conn)
                deadline.watch(conn.sock)
            return type(f"Deadline{base.__name__}", (base,), {"connect": connect})

        http_pool = type("DeadlineHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": watched(HTTPConnection)})
        https_pool = type("DeadlineHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": watched(HTTPSConnection)})
        self.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}


class GuardedSession(requests.Session):
    """A requests session that enforces the host policy, the token rule, timeouts and a byte cap."""

    def __init__(self, policy: HostPolicy, max_bytes: int, timeout: float, max_redirects: int = 3,
                 deadline: float | None = None, token_origin: Origin | None = None,
                 authorization: str = "") -> None:
        super().__init__()
        self.policy, self.max_bytes, self.timeout, self.max_redirects = policy, max_bytes, timeout, max_redirects
        self.trust_env = False  # never route through proxies picked up from the environment
        self.token_origin, self.authorization = token_origin, authorization
        self.deadline = _Deadline(deadline if deadline is not None else 1e6)
        adapter = _DeadlineAdapter(self.deadline)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def close(self) -> None:
        self.deadline.cancel()
        super().close()

    def request(self, method, url, **kwargs):  # type: ignore[override]
        kwargs["allow_redirects"] = False  # followed below, each hop checked against the policy
        kwargs["stream"] = True
        headers = {k: v for k, v in (kwargs.pop("headers", None) or {}).items() if k.lower() != "authorization"}
        for _ in range(self.max_redirects + 1):
            origin, canonical = self.policy.admit(url)
            hop = dict(headers)
            if self.authorization and origin == self.token_origin:
                hop["Authorization"] = self.authorization   # the token goes to Label Studio only
            remaining = self.deadline.remaining()
            if remaining <= 0:
                raise self._past_deadline()
            kwargs["timeout"] = min(self.timeout, remaining)
            try:
                resp = super().request(method, canonical, headers=hop, **kwargs)
            except requests.RequestException:
                if self.deadline.expired:
                    raise self._past_deadline() from None
                raise
            if resp.is_redirect and "location" in resp.headers:
                url = urljoin(canonical, resp.headers["location"])
                resp.close()
                continue
            return self._read_capped(resp)
        raise ImageError("too many redirects while fetching the image")

    def _past_deadline(self) -> ImageError:
        return ImageError(f"fetching the image took longer than IMAGE_FETCH_DEADLINE ({self.deadline.seconds:g} s)")

    def _read_capped(self, resp: requests.Response) -> requests.Response:
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            resp.close()
            raise ImageError(f"the image is larger than MAX_IMAGE_BYTES ({self.max_bytes} bytes)")
        chunks, total = [], 0
        try:
            for chunk in resp.iter_content(64 * 1024):
                total += len(chunk)
                if total > self.max_bytes:
                    resp.close()
                    raise ImageError(f"the image is larger than MAX_IMAGE_BYTES ({self.max_bytes} bytes)")
                chunks.append(chunk)
        except requests.RequestException as exc:
            resp.close()
            if self.deadline.expired:
                raise self._past_deadline() from None
            if any(isinstance(a, ReadTimeoutError) for a in exc.args):   # requests wraps a body read timeout
                raise requests.Timeout(str(exc)) from None
            raise
        if self.deadline.expired:
            raise self._past_deadline()
        resp._content = b"".join(chunks)  # later `.content` reads this instead of the socket
        resp._content_consumed = True
        return resp


@dataclass(frozen=True)
class FetchLimits:
    """What one image download may cost."""

    max_bytes: int = 20 * 1024 * 1024    # body size
    max_pixels: int = 40_000_000         # width x height, checked before decoding
    timeout: float = 10.0                # seconds per connect and per read
    deadline: float = 30.0               # seconds for the whole download, redirects included


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


class _QuietSDK(logging.Filter):
    """Drops the SDK's per-download `localhost` warning; `ImageLoader` says it once per host."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is not accessible inside of docker containers" not in str(record.msg)


_SDK_LOGGER = logging.getLogger(ls_io.__name__)
if not any(isinstance(f, _QuietSDK) for f in _SDK_LOGGER.filters):
    _SDK_LOGGER.addFilter(_QuietSDK())
class _LocalhostWarning:
    """Says once per Label Studio URL (at most 64) that `localhost` there means the container itself."""

    def __init__(self, most: int = 64) -> None:
        self.most = most
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, label_studio_url: str, origin: Origin) -> None:
        if origin.host not in ("localhost", "127.0.0.1", "[::1]"):
            return
        with self._lock:
            if label_studio_url in self._said or len(self._said) >= self.most:
                return
            self._said.add(label_studio_url)
        logger.warning("images are fetched from Label Studio at %s: inside a container that is the container "
                       "itself; set LABEL_STUDIO_URL to an address the backend can reach", origin.netloc)


_warn_localhost_once = _LocalhostWarning()


class ImageLoader:
    """Loads task images from one `ImageSource` (one request, or one batch job)."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source
        self.hostname = source.label_studio_url.rstrip("/")
        self.token = source.token
        self.limits = source.limits
        self.origin: Origin | None = None
        if self.hostname:
            self.origin, _ = parse_http_url(self.hostname)
            _warn_localhost_once(self.hostname, self.origin)
        self.policy = HostPolicy.build(self.hostname, source.allowed_hosts)

    def _authorization(self) -> str:
        if not self.token:
            return ""
        scheme = "Bearer" if ls_io.is_jwt_well_formed(self.token) else "Token"
        return f"{scheme} {self.token}"

    def check_url(self, url: object, task_id: int | None = None) -> str:
        if not isinstance(url, str) or not url.strip():
            raise ImageError("the task has no image URL in the key the labeling config names")
        url = url.strip()
        if url.startswith(_CLOUD_PREFIXES) or url.startswith(_LS_PATH_PREFIXES):
            if not self.hostname:
                raise ImageError("set LABEL_STUDIO_URL (or connect from Label Studio) to fetch Label Studio files")
            if url.startswith(_CLOUD_PREFIXES) and (isinstance(task_id, bool) or not isinstance(task_id, int)):
                raise ImageError("a cloud-storage image (s3://, gs://, azure-blob://) needs the task's integer id "
                                 "to be presigned by Label Studio")
            parse_http_url(self.hostname + "/" + url.lstrip("/"))   # the SDK joins them: same rules apply
            return url
        return self.policy.admit(url)[1]

    def fetch_bytes(self, url: str, task_id: int | None) -> bytes:
        url = self.check_url(url, task_id)
        session = GuardedSession(self.policy, self.limits.max_bytes, self.limits.timeout,
                                 deadline=self.limits.deadline, token_origin=self.origin,
                                 authorization=self._authorization())
        # A fresh folder per download, removed here: nothing is left in the temp dir afterwards.
        with tempfile.TemporaryDirectory(prefix="clickpose-img-") as cache_dir:
            try:
                with ls_io.http_session(session):
                    # image_dir: a path that never exists, so the SDK never reads LS's upload folder.
                    path = ls_io.get_local_path(url, cache_dir=cache_dir, hostname=self.hostname or None,
                                                access_token=self.token or "-", task_id=task_id,
                                                image_dir=os.path.join(cache_dir, "no-local-uploads"))
            except ImageError:
                raise
            except requests.HTTPError as exc:
                raise ImageError(_http_error_text(exc)) from None
            except requests.Timeout:
                raise ImageError(f"fetching the image timed out after {self.limits.timeout:g} s "
                                 "(IMAGE_FETCH_TIMEOUT, per connect or read)") from None
            except (requests.RequestException, OSError, ValueError) as exc:
                raise ImageError(f"cannot fetch the task image ({type(exc).__name__})") from None
            except Exception as exc:  # the SDK raises bare Exception for some URL kinds
                raise ImageError(f"cannot resolve the task image URL ({type(exc).__name__})") from None
            finally:
                session.close()
            size = os.path.getsize(path)
            if size > self.limits.max_bytes:  # a local-storage file never went through the session
                raise ImageError(f"the image is larger than MAX_IMAGE_BYTES ({self.limits.max_bytes} bytes)")
            with open(path, "rb") as f:
                return f.read()

    def load(self, url: str, task_id: int | None) -> np.ndarray:
        return decode_image(self.fetch_bytes(url, task_id), self.limits.max_pixels)


def _http_error_text(exc: requests.HTTPError) -> str:
    resp = exc.response
    code = resp.status_code if resp is not None else "?"
    try:
        where = parse_http_url(resp.url)[0].netloc if resp is not None else "the image server"
    except ImageError:
        where = "the image server"
    return f"{where} answered HTTP {code} for the task image"


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header, before any pixel is decoded (EXIF rotation not applied)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ImageError(f"the task image cannot be decoded ({type(exc).__name__})") from None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes -> HxWx3 uint8 RGB as displayed (EXIF orientation applied, by clickpose_core)."""
    w, h = image_size(data)
    if w * h > max_pixels:
        raise ImageError(f"the image has {w}x{h} pixels, more than MAX_IMAGE_PIXELS ({max_pixels})")
    if min(w, h) < 8 or max(w, h) > 64 * min(w, h):
        raise ImageError(f"the image is {w}x{h} pixels: each side must be at least 8 px and at most 64 times "
                         "the other")
    try:
        return load_image(data)
    except CoreImageError as exc:
        raise ImageError(f"the task image cannot be decoded: {exc}") from None
