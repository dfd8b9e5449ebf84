"""Backend settings, read once from the environment.

Every knob of the deployment is an environment variable so that the same image runs under
docker compose, gunicorn on a workstation and the tests. the README has the table.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .images import ImageSource


class SettingsError(ValueError):
    """An environment variable has a value the backend cannot use."""


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: dict[str, str], name: str, default: float, minimum: float | None = None) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise SettingsError(f"{name} must be a finite number >= {minimum}, got {raw!r}")
    return value


def _choice(env: dict[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (case-insensitive; unset or empty = the first)."""
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {env[name]!r}")
    return raw


def _check_image_hosts(label_studio_url: str, hosts: tuple[str, ...]) -> None:
    """LABEL_STUDIO_URL and ALLOWED_IMAGE_HOSTS read by the parser downloads use, at start.

    One parser (`backend.images`): what passes here is exactly what the host policy admits later,
    and a bad value stops the process instead of failing every request.
    """
    from .images import HostPolicy, ImageError, parse_http_url  # lazily, and only when set: images imports the SDK

    if label_studio_url:
        try:
            parse_http_url(label_studio_url)
        except ImageError as exc:
            raise SettingsError("LABEL_STUDIO_URL must be an http(s) base URL such as http://label-studio:8080, "
                                f"without credentials ({exc})") from None
    try:
        HostPolicy.build("", hosts)
    except ImageError as exc:
        raise SettingsError(str(exc)) from None


@dataclass(frozen=True)
class Settings:
    """All environment-driven settings. `repr` hides the secrets so a logged Settings is safe."""

    label_studio_url: str = ""                   # LABEL_STUDIO_URL: where images are downloaded from
    label_studio_api_key: str = field(default="", repr=False)   # LABEL_STUDIO_API_KEY
    weights: str | None = None                   # CLICKPOSE_WEIGHTS: checkpoint path; None = default weights
    device: str = "cpu"                          # CLICKPOSE_DEVICE
    precision: str = "float32"                   # CLICKPOSE_PRECISION: float32 or bfloat16 (where native)
    cache_size: int = 32                         # CLICKPOSE_CACHE_SIZE: interactive sessions kept per process
    workers: int = 1                             # WORKERS (gunicorn)
    threads: int = 4                             # THREADS (gunicorn)
    basic_auth_user: str = ""                    # BASIC_AUTH_USER
    basic_auth_pass: str = field(default="", repr=False)        # BASIC_AUTH_PASS
    log_level: str = "INFO"                      # LOG_LEVEL
    score_threshold: float = 0.3                 # MODEL_SCORE_THRESHOLD: default when the config sets none
    allowed_hosts: tuple[str, ...] = ()          # ALLOWED_IMAGE_HOSTS: extra hosts images may come from
    max_image_bytes: int = 20 * 1024 * 1024      # MAX_IMAGE_BYTES
    max_image_pixels: int = 40_000_000           # MAX_IMAGE_PIXELS
    fetch_timeout: float = 10.0                  # IMAGE_FETCH_TIMEOUT (seconds, connect and each read)
    fetch_deadline: float = 30.0                 # IMAGE_FETCH_DEADLINE (seconds, one whole download)
    max_request_bytes: int = 32 * 1024 * 1024    # MAX_REQUEST_BYTES: body cap of every request
    batch_size: int = 4                          # PREDICT_BATCH_SIZE: images fetched and decoded together
    max_tasks_per_request: int = 64             # MAX_TASKS_PER_REQUEST: pre-annotation tasks admitted per /predict
    predict_time_budget: float = 45.0            # PREDICT_TIME_BUDGET: seconds one batch /predict may work
    prefetch_cache_size: int = 8                 # CLICKPOSE_PREFETCH_CACHE_SIZE: pre-annotated sessions kept
    max_pixels_in_flight: int = 80_000_000       # MAX_PIXELS_IN_FLIGHT: decoded pixels held per lane
    max_setups: int = 256                        # MAX_SETUPS: projects whose /setup connection is remembered
    max_clicks_per_task: int = 256               # MAX_CLICKS_PER_TASK: smart points kept per task

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
        user, password = env.get("BASIC_AUTH_USER", ""), env.get("BASIC_AUTH_PASS", "")
        if bool(user) != bool(password):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        hosts = tuple(h.strip().lower() for h in env.get("ALLOWED_IMAGE_HOSTS", "").split(",") if h.strip())
        label_studio_url = env.get("LABEL_STUDIO_URL", "").strip().rstrip("/")
        if label_studio_url or hosts:
            _check_image_hosts(label_studio_url, hosts)
        return cls(
            label_studio_url=label_studio_url,
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY", "").strip(),
            weights=env.get("CLICKPOSE_WEIGHTS", "").strip() or None,
            device=env.get("CLICKPOSE_DEVICE", "cpu").strip() or "cpu",
            precision=_choice(env, "CLICKPOSE_PRECISION", ("float32", "bfloat16")),
            cache_size=_int(env, "CLICKPOSE_CACHE_SIZE", 32, minimum=1),
            workers=_int(env, "WORKERS", 1, minimum=1),
            threads=_int(env, "THREADS", 4, minimum=1),
            basic_auth_user=user,
            basic_auth_pass=password,
            log_level=level,
            score_threshold=_float(env, "MODEL_SCORE_THRESHOLD", 0.3),
            allowed_hosts=hosts,
            max_image_bytes=_int(env, "MAX_IMAGE_BYTES", 20 * 1024 * 1024, minimum=1),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", 40_000_000, minimum=1),
            fetch_timeout=_float(env, "IMAGE_FETCH_TIMEOUT", 10.0, minimum=0.1),
            fetch_deadline=_float(env, "IMAGE_FETCH_DEADLINE", 30.0, minimum=0.1),
            max_request_bytes=_int(env, "MAX_REQUEST_BYTES", 32 * 1024 * 1024, minimum=1024),
            batch_size=_int(env, "PREDICT_BATCH_SIZE", 4, minimum=1),
            max_tasks_per_request=_int(env, "MAX_TASKS_PER_REQUEST", 64, minimum=1),
            predict_time_budget=_float(env, "PREDICT_TIME_BUDGET", 45.0, minimum=1.0),
            prefetch_cache_size=_int(env, "CLICKPOSE_PREFETCH_CACHE_SIZE", 8, minimum=1),
            max_pixels_in_flight=_int(env, "MAX_PIXELS_IN_FLIGHT", 80_000_000, minimum=1),
            max_setups=_int(env, "MAX_SETUPS", 256, minimum=1),
            max_clicks_per_task=_int(env, "MAX_CLICKS_PER_TASK", 256, minimum=1),
        )

    def image_source(self, hostname: str = "", access_token: str = "") -> "ImageSource":
        """The image source of one request; `hostname`/`access_token` are what `/setup` sent.

        LABEL_STUDIO_URL wins over the `/setup` hostname, which comes from the network. The
        environment's key goes to LABEL_STUDIO_URL only: a `/setup` hostname (anyone who can
        reach `/setup` can send one) gets the token that same `/setup` sent, never the key.
        """
        from .images import FetchLimits, ImageSource  # lazily: images imports the SDK, settings must stay light

        if self.label_studio_url:
            url, token = self.label_studio_url, self.label_studio_api_key or access_token
        else:
            url, token = hostname.rstrip("/"), access_token
        return ImageSource(
            label_studio_url=url, token=token, allowed_hosts=self.allowed_hosts,
            limits=FetchLimits(self.max_image_bytes, self.max_image_pixels, self.fetch_timeout, self.fetch_deadline),
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line."""
        return tuple(s for s in (self.label_studio_api_key, self.basic_auth_pass) if s)
