"""The Flask app: label-studio-ml 1.0.9's server with the routes hardened.

label-studio-ml's own views turn every exception into a 500 whose body holds the stack trace,
and its request hooks log headers and bodies (basic-auth headers, `/setup`'s access token) at
DEBUG. So `create_app` keeps the framework's app, manager and model base class, but

* replaces `/predict`, `/setup`, `/health` and `/webhook` with views that validate the body and
  answer 4xx with a message for bad input (a 500 never carries a traceback);
* removes the logging hooks, and redacts secrets from every log record as a second line;
* caps request bodies (MAX_REQUEST_BYTES) and checks basic auth when it is configured.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import threading
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from label_studio_ml import api as ls_api

from .clicks import ContextError
from .images import ImageError
from .label_config import LabelConfigError, cached_parse
from .model import ClickPoseBackend, TaskError, get_predictor
from .settings import Settings

logger = logging.getLogger(__name__)


class BadRequest(ValueError):
    """The request body is not what Label Studio sends."""


# -- secrets never reach a log line ----------------------------------------------------------
class Redactor:
    """Replaces known secrets and anything that looks like a credential in every log record."""

    _PATTERNS = (
        re.compile(r"(?i)\b(Token|Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
        re.compile(r"""(?i)(["']?(?:access_token|api_key|password|refresh)["']?\s*[:=]\s*["']?)[^"',\s}]+"""),
    )

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *values: str) -> None:
        with self._lock:
            self.secrets.update(v for v in values if v and len(v) >= 4)

    def clean(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        text = self._PATTERNS[0].sub(lambda m: f"{m.group(1)} ***", text)
        return self._PATTERNS[1].sub(lambda m: f"{m.group(1)}***", text)

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
            return record

        logging.setLogRecordFactory(factory)
        logging._clickpose_redactor = self  # type: ignore[attr-defined]


REDACTOR = Redactor()

# Label Studio connection per project id ("<id>.<created>" -> "<id>"): the hostname and token of
# the last /setup, used to download that project's images.
_SETUPS: dict[str, dict[str, str]] = {}
_SETUPS_LOCK = threading.Lock()


def _project_id(project: Any) -> str:
    return str(project or "").split(".")[0]


def _json_body() -> dict:
    body = request.get_json(silent=True)  # raises 413 itself when the body is over the cap
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    return body


def _error(status: int, message: str):
    return jsonify({"status": status, "error": message}), status


def _check_size(settings: Settings) -> Any:
    # get_json(silent=True) would swallow Werkzeug's own 413, so the cap is checked up front.
    if request.content_length is not None and request.content_length > settings.max_request_bytes:
        return _error(413, f"request body is larger than MAX_REQUEST_BYTES ({settings.max_request_bytes} bytes)")
    return None


def _check_basic_auth(settings: Settings) -> Any:
    if not settings.basic_auth_user or request.path in ("/health", "/"):
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
        predictor = get_predictor(settings_now())
        served = cached_parse(schema, tuple(predictor.config.keypoint_names), settings_now().score_threshold)
        hostname = body.get("hostname") or ""
        token = body.get("access_token") or ""
        if not isinstance(hostname, str) or not isinstance(token, str):
            raise BadRequest("'hostname' and 'access_token' must be strings")
        REDACTOR.add(token)
        with _SETUPS_LOCK:
            _SETUPS[_project_id(body.get("project"))] = {"hostname": hostname, "access_token": token}
            _SETUPS[""] = _SETUPS[_project_id(body.get("project"))]  # interactive calls may lack a known project
        # Keep the framework's bookkeeping (it builds the model object; that is cheap here).
        ls_api._manager.fetch(str(body.get("project") or ""), schema, False, hostname=hostname,
                              access_token=token, model_version=body.get("model_version"))
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
        project = str(body.get("project") or "")
        with _SETUPS_LOCK:
            conn = _SETUPS.get(_project_id(project)) or _SETUPS.get("") or {}
        model = ClickPoseBackend(label_config=config, project=project, hostname=conn.get("hostname", ""),
                                 access_token=conn.get("access_token", ""))
        results = model.predict(tasks, context=params.get("context"))
        return jsonify({"results": results, "model_version": model.model_version})

    def webhook() -> Any:
        body = _json_body()
        action = body.get("action")
        if not isinstance(action, str):
            raise BadRequest("'action' is required")
        # Click-Pose is not fine-tuned online; acknowledge so Label Studio does not retry.
        return jsonify({"status": "ok", "action": action, "trained": False}), 200

    app.view_functions["health"] = health
    app.view_functions["_setup"] = setup
    app.view_functions["_predict"] = predict
    app.view_functions["webhook"] = webhook

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
