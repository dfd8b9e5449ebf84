"""The Flask app: label-studio-ml 1.0.9's server with the routes hardened.

label-studio-ml's own views turn every exception into a 500 whose body holds the stack trace,
and its request hooks log headers and bodies (basic-auth headers, `/setup`'s access token) at
DEBUG. So `create_app` keeps the framework's app, manager and model base class, but

* replaces every framework route (`/predict`, `/setup`, `/health`, `/`, `/webhook`, `/train`,
  `/versions`, `/is_training`, `/metrics`) with views that validate the body and answer 4xx with
  a message for bad input (a 500 never carries a traceback);
* removes the logging hooks, and redacts secrets from every log record as a second line;
* caps request bodies (MAX_REQUEST_BYTES) and checks basic auth when it is configured;
* remembers the connection of at most MAX_SETUPS projects (`SetupRegistry`), each project's own.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable

from flask import Flask, json as flask_json, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from label_studio_ml import api as ls_api

from .clicks import ContextError
from .images import ImageError, parse_http_url
from .label_config import LabelConfigError, cached_parse
from .model import ClickPoseBackend, TaskError, get_predictor
from .serving import Busy
from .settings import Settings

logger = logging.getLogger(__name__)


class BadRequest(ValueError):
    """The request body is not what Label Studio sends."""


# -- secrets never reach a log line ----------------------------------------------------------
class Redactor:
    """Replaces known secrets and anything that looks like a credential in every log record.

    Known secrets: the settings' (for the process's life) and the tokens of the projects
    `SetupRegistry` remembers now (bounded by MAX_SETUPS, pruned with it). Patterns catch the
    rest: auth headers, `key=value` credentials, `user:password@` in URLs, and signed-URL query
    values (`X-Amz-Signature=`, `token=`, `sig=`, ...), as the SDK and urllib3 log URLs.
    """

    _PATTERNS = (
        (re.compile(r"(?i)\b(Token|Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 ***"),
        (re.compile(r"""(?i)(["']?(?:access_token|api_key|password|refresh)["']?\s*[:=]\s*["']?)[^"',\s}&]+"""),
         r"\1***"),
        # Up to the last "@" of the authority, as urllib3 splits it: a password may hold "@" itself.
        (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s'\"]*@"), r"\1***@"),
        (re.compile(r"(?i)([?&;](?:[a-z0-9_.-]*(?:signature|credential|security-token|token|secret|password|key)"
                    r"|sig|se|st|skoid|sktid)=)[^&\s'\"]+"), r"\1***"),
    )

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.dynamic: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add(self, *values: str) -> None:
        """Secrets for the life of the process (the settings')."""
        with self._lock:
            self.secrets.update(v for v in values if v and len(v) >= 4)

    def set_dynamic(self, values: Iterable[str]) -> None:
        """The secrets that come and go (remembered `/setup` tokens); replaces the previous set."""
        self.dynamic = frozenset(v for v in values if v and len(v) >= 4)

    def clean(self, text: str) -> str:
        for secret in sorted(self.secrets | self.dynamic, key=len, reverse=True):
            text = text.replace(secret, "***")
        for pattern, replacement in self._PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def install(self) -> None:
        """Wrap the log record factory once, so every logger and handler (caplog included) is covered."""
        if getattr(logging, "_clickpose_redactor", None) is self:
            return
        previous = logging.getLogRecordFactory()
        redactor = self

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a broken format string is not ours to fix here
                return record
            cleaned = redactor.clean(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
            if record.exc_info and not record.exc_text:   # a traceback can quote URLs and tokens too
                record.exc_text = redactor.clean(_TRACE_FORMATTER.formatException(record.exc_info))
            return record

        logging.setLogRecordFactory(factory)
        logging._clickpose_redactor = self  # type: ignore[attr-defined]


_TRACE_FORMATTER = logging.Formatter()
REDACTOR = Redactor()


@dataclass(frozen=True)
class Connection:
    """What one project's `/setup` said: where its Label Studio is and the token to use there."""

    hostname: str = ""
    access_token: str = field(default="", repr=False)


class SetupRegistry:
    """The last `/setup` of at most `capacity` projects, least recently used dropped first.

    `/setup` needs no authentication unless basic auth is on, so what it can make the process
    keep is bounded, and a project's connection is used for that project only (a setup never
    retargets another project's downloads).
    """

    def __init__(self, capacity: int, redactor: Redactor) -> None:
        self.capacity, self.redactor = capacity, redactor
        self._by_project: "OrderedDict[str, Connection]" = OrderedDict()
        self._lock = threading.Lock()

    def put(self, project: str, conn: Connection) -> None:
        with self._lock:
            self._by_project[project] = conn
            self._by_project.move_to_end(project)
            while len(self._by_project) > self.capacity:
                self._by_project.popitem(last=False)
            self.redactor.set_dynamic(c.access_token for c in self._by_project.values())

    def get(self, project: str) -> Connection:
        with self._lock:
            return self._by_project.get(project, Connection())

    def __len__(self) -> int:
        return len(self._by_project)


_PROJECT_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}(\.[0-9]{1,20})?$")


def _project_id(project: Any) -> str:
    """"<id>.<created>" (what Label Studio sends), an integer id, or nothing -> "<id>" or ""."""
    if project is None or project == "":
        return ""
    if isinstance(project, int) and not isinstance(project, bool):
        project = str(project)
    if not isinstance(project, str) or not _PROJECT_RE.match(project):
        raise BadRequest("'project' must be Label Studio's project id (\"<id>.<timestamp>\" or an integer)")
    return project.split(".")[0]


def _hostname(value: Any) -> str:
    """The `/setup` hostname: empty, or an http(s) base URL without credentials."""
    if value in (None, ""):
        return ""
    if not isinstance(value, str):
        raise BadRequest("'hostname' must be a string")
    try:
        origin, canonical = parse_http_url(value.strip())
    except ImageError as exc:
        raise BadRequest(f"'hostname' must be Label Studio's http(s) base URL: {exc}") from None
    return canonical.rstrip("/")


def _json_body() -> dict:
    """The body as a JSON object, never read past MAX_REQUEST_BYTES.

    `_check_size` refuses a Content-Length over the cap up front; a chunked body has none and
    gunicorn hands it over uncapped (Werkzeug 2.0 applies MAX_CONTENT_LENGTH to forms only), so
    the read itself stops one byte past the cap.
    """
    if not request.is_json:
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    cap = request.max_content_length
    raw = request.stream.read(cap + 1)
    if len(raw) > cap:
        raise _too_large(cap)
    try:
        body = flask_json.loads(raw)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    except ValueError:   # not JSON, or not UTF-8/16/32 text
        body = None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    return body


def _error(status: int, message: str):
    return jsonify({"status": status, "error": message}), status


def _too_large(cap: int) -> RequestEntityTooLarge:
    return RequestEntityTooLarge(f"request body is larger than MAX_REQUEST_BYTES ({cap} bytes)")


def _check_size(settings: Settings) -> Any:
    """413 before anything is read when the declared Content-Length is over the cap."""
    if request.content_length is not None and request.content_length > settings.max_request_bytes:
        raise _too_large(settings.max_request_bytes)
    return None


def _check_basic_auth(settings: Settings) -> Any:
    if not settings.basic_auth_user or request.path == "/health":
        return None  # health stays open for container health checks; it reveals no secret
    header = request.headers.get("Authorization", "")
    ok = False
    if header.startswith("Basic "):
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
            ok = (hmac.compare_digest(user.encode(), settings.basic_auth_user.encode())
                  & hmac.compare_digest(password.encode(), settings.basic_auth_pass.encode()))
        except (binascii.Error, UnicodeDecodeError):
            ok = False
    if ok:
        return None
    resp = jsonify({"status": 401, "error": "basic authentication required"})
    resp.status_code = 401
    resp.headers["WWW-Authenticate"] = 'Basic realm="clickpose-backend"'
    return resp


def create_app(settings: Settings | None = None, load_model: bool = True) -> Flask:
    """Configure label-studio-ml's app for Click-Pose. `load_model` loads the weights now."""
    settings = settings or Settings.from_env()
    REDACTOR.add(*settings.secrets)
    REDACTOR.install()
    ClickPoseBackend.settings = settings
    app: Flask = ls_api.init_app(model_class=ClickPoseBackend)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.config["clickpose_settings"] = settings
    app.config["clickpose_setups"] = SetupRegistry(settings.max_setups, REDACTOR)

    # The framework logs headers and bodies at DEBUG: drop those hooks (idempotent).
    app.before_request_funcs[None] = [f for f in app.before_request_funcs.get(None, [])
                                      if f is not ls_api.log_request_info]
    app.after_request_funcs[None] = [f for f in app.after_request_funcs.get(None, [])
                                     if f is not ls_api.log_response_info]
    if not any(getattr(f, "_clickpose_auth", False) for f in app.before_request_funcs[None]):
        def auth_hook() -> Any:
            current = app.config["clickpose_settings"]
            return _check_basic_auth(current) or _check_size(current)
        auth_hook._clickpose_auth = True  # type: ignore[attr-defined]
        app.before_request_funcs[None].insert(0, auth_hook)

    def settings_now() -> Settings:
        return app.config["clickpose_settings"]

    def health() -> Any:
        predictor = get_predictor(settings_now())
        info = dict(predictor.weights_info)
        return jsonify({"status": "UP", "model_class": "ClickPoseBackend", "model_version": predictor.model_version,
                        "weights": {k: info.get(k) for k in ("path", "kind", "sha256", "licence") if k in info},
                        "v2": True})

    def setup() -> Any:
        body = _json_body()
        schema = body.get("schema")
        if not isinstance(schema, str):
            raise BadRequest("'schema' (the labeling config XML) is required")
        project = _project_id(body.get("project"))
        hostname = _hostname(body.get("hostname"))
        token = body.get("access_token") or ""
        if not isinstance(token, str):
            raise BadRequest("'access_token' must be a string")
        predictor = get_predictor(settings_now())
        served = cached_parse(schema, tuple(predictor.config.keypoint_names), settings_now().score_threshold)
        app.config["clickpose_setups"].put(project, Connection(hostname, token))
        reply = {"model_version": predictor.model_version}
        if served.unmapped_labels:
            reply["warning"] = ("labels ignored by the model: " + ", ".join(served.unmapped_labels))
        return jsonify(reply)

    def predict() -> Any:
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise BadRequest("'tasks' must be a non-empty list of tasks")
        config = body.get("label_config")
        if not isinstance(config, str) or not config.strip():
            raise BadRequest("'label_config' (the project's labeling config) is required")
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise BadRequest("'params' must be an object")
        project = _project_id(body.get("project"))
        # Only this project's own /setup: a setup for another project never retargets this one.
        conn = app.config["clickpose_setups"].get(project)
        model = ClickPoseBackend(label_config=config, project=project, hostname=conn.hostname,
                                 access_token=conn.access_token)
        model.served()   # a config the backend cannot serve is a 400 before any download
        results = model.predict(tasks, context=params.get("context"))
        return jsonify({"results": results, "model_version": model.model_version})

    def webhook() -> Any:
        body = _json_body()
        action = body.get("action")
        if not isinstance(action, str):
            raise BadRequest("'action' is required")
        # Click-Pose is not fine-tuned online; acknowledge so Label Studio does not retry.
        return jsonify({"status": "ok", "action": action, "trained": False}), 200

    def train() -> Any:
        _json_body()
        return jsonify({"status": "ok", "trained": False,
                        "detail": "Click-Pose is not trained from Label Studio annotations"}), 200

    def versions() -> Any:
        _json_body()
        return jsonify({"versions": [get_predictor(settings_now()).model_version]})

    def is_training() -> Any:
        return jsonify({"is_training": False})

    def metrics() -> Any:
        return jsonify({})

    # Every route of label-studio-ml's app is ours: its own views answer 500 with a traceback.
    ours = {"health": health, "_setup": setup, "_predict": predict, "webhook": webhook, "_train": train,
            "get_version": versions, "_is_training": is_training, "metrics": metrics}
    missing = {rule.endpoint for rule in app.url_map.iter_rules() if rule.endpoint != "static"} - set(ours)
    if missing:
        raise RuntimeError(f"label-studio-ml routes without a hardened view: {sorted(missing)}")
    app.view_functions.update(ours)

    @app.errorhandler(BadRequest)
    @app.errorhandler(TaskError)
    @app.errorhandler(ContextError)
    def bad_request(exc: Exception):
        return _error(400, str(exc))

    @app.errorhandler(LabelConfigError)
    def bad_config(exc: Exception):
        return _error(400, f"labeling config not supported: {exc}")

    @app.errorhandler(ImageError)
    def bad_image(exc: Exception):
        return _error(422, str(exc))

    @app.errorhandler(Busy)
    def busy(exc: Exception):
        return _error(503, str(exc))

    @app.errorhandler(RecursionError)
    def too_deep(exc: Exception):
        return _error(400, "the request body is nested too deeply")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    @app.errorhandler(AssertionError)      # the framework maps these three to 500/404 with
    @app.errorhandler(IndexError)          # the exception text; they are internal errors here
    @app.errorhandler(FileNotFoundError)
    def internal(exc: Exception):
        # Logged with the trace for the operator; the client gets no internals.
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the backend log")

    if load_model:
        get_predictor(settings)
    return app
