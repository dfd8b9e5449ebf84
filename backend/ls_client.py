"""Label Studio access for the batch tools: credentials, paged task listing, bulk prediction import.

Two kinds of API key exist in Label Studio 1.23:

* a legacy token, sent as `Authorization: Token <key>`;
* a personal access token (PAT): a long-lived *refresh* JWT. It is exchanged at
  `/api/token/refresh/` for an access JWT (5 minutes by default), sent as `Bearer <access>`.
  `Credentials` refreshes the access token before it expires, for the API calls and for the
  image downloads alike (the SDK's `get_local_path` needs the access token, not the PAT).

`LabelStudioProject` wraps label-studio-sdk for one project. Listing always pages `tasks.list`
(never `tasks.get` per task: with `show_collab_predictions` on, that call itself triggers the ML
backend). The prediction import runs with the SDK's automatic retry off, because a retried bulk
POST whose first attempt was committed duplicates every prediction in it.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

# Label Studio's Data Manager serialises a task's model versions as one comma-joined string,
# cut at this many characters (`DataManagerTaskSerializer.CHAR_LIMITS`).
_DM_CHAR_LIMIT = 500


class LabelStudioError(RuntimeError):
    """Label Studio refused a request or cannot be reached; the message is for the user.

    status: the HTTP status Label Studio answered, None when it did not answer.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AmbiguousWrite(LabelStudioError):
    """A write whose outcome is unknown (timeout, lost connection, 5xx): it may have been committed."""


def _jwt_claims(token: str) -> dict | None:
    """Unverified claims of a JWT, None for anything else (a legacy token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


@dataclass
class Credentials:
    """A Label Studio API key and, for a PAT, the current access token.

    url: Label Studio base URL; api_key: legacy token or PAT; refresh_margin: seconds before
    expiry at which the access token is renewed. `refreshes` counts exchanges (for tests).
    """

    url: str
    api_key: str = field(repr=False)
    refresh_margin: float = 60.0
    timeout: float = 30.0
    refreshes: int = 0
    _access: str = field(default="", repr=False)
    _expires: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.api_key = self.api_key.strip()
        if not self.api_key:
            raise LabelStudioError("no Label Studio API key: pass --api-key or set LABEL_STUDIO_API_KEY")
        claims = _jwt_claims(self.api_key)
        self.kind = "legacy" if claims is None else ("pat" if claims.get("token_type") == "refresh" else "access")
        if self.kind == "access":  # an access JWT works until it expires, and cannot be renewed
            self._access, self._expires = self.api_key, float(claims.get("exp") or 0)

    @property
    def token(self) -> str:
        """What to send: the legacy key, or a valid access token."""
        if self.kind == "legacy":
            return self.api_key
        with self._lock:
            if self.kind == "pat" and time.time() > self._expires - self.refresh_margin:
                self._refresh()
            return self._access

    @property
    def header(self) -> str:
        """The `Authorization` header value."""
        token = self.token
        return f"Token {token}" if self.kind == "legacy" else f"Bearer {token}"

    def _refresh(self) -> None:
        try:
            r = httpx.post(self.url.rstrip("/") + "/api/token/refresh/", json={"refresh": self.api_key},
                           timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} to refresh the access token "
                                   f"({type(exc).__name__})") from None
        if r.status_code in (401, 403):
            raise LabelStudioError("Label Studio rejected the personal access token (revoked or expired); "
                                   "create a new one under Account & Settings")
        if r.status_code != 200 or "access" not in r.json():
            raise LabelStudioError(f"refreshing the access token failed: HTTP {r.status_code}")
        self._access = r.json()["access"]
        self._expires = float((_jwt_claims(self._access) or {}).get("exp") or time.time() + 300)
        self.refreshes += 1


class _Auth(httpx.Auth):
    """Sets a fresh `Authorization` header on every request the SDK sends."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    def auth_flow(self, request: httpx.Request):
        request.headers["Authorization"] = self.credentials.header
        yield request


@dataclass(frozen=True)
class ProjectInfo:
    """What the batch tools need of a project."""

    id: int
    title: str
    label_config: str
    model_version: str
    retrieves_on_listing: bool   # `evaluate_predictions_automatically`: listing calls the ML backend


def _filter(mv: str, operator: str) -> dict:
    return {"filter": "filter:tasks:predictions_model_versions", "operator": operator, "type": "List",
            "value": [mv]}


def _query(items: Sequence[dict] = (), ids: Sequence[int] | None = None) -> str:
    query: dict[str, Any] = {"filters": {"conjunction": "and", "items": list(items)}, "ordering": ["tasks:id"]}
    if ids is not None:
        query["selectedItems"] = {"all": False, "included": list(ids)}
    return json.dumps(query)


def listed_versions(task: dict) -> set[str] | None:
    """The model versions of a task as the Data Manager lists them, None where the list was cut."""
    raw = task.get("predictions_model_versions") or ""
    if not isinstance(raw, str):
        return None
    tokens = [t.strip() for t in raw.split(",")]
    if len(raw) >= _DM_CHAR_LIMIT:
        tokens = tokens[:-1]  # the last one may be a cut-off prefix of a longer version
        return set(tokens) or None
    return {t for t in tokens if t}


def count_version(task: dict, mv: str) -> int:
    """How many predictions of model version `mv` a fully listed task has."""
    return sum(1 for p in task.get("predictions") or [] if isinstance(p, dict) and p.get("model_version") == mv)


class LabelStudioProject:
    """One Label Studio project through label-studio-sdk (reads retried by the SDK, writes never)."""

    def __init__(self, url: str, credentials: Credentials, project: int, timeout: float = 120.0,
                 page_size: int = 200) -> None:
        self.url = url.rstrip("/")
        self.credentials = credentials
        self.id = project
        self.page_size = page_size
        http = httpx.Client(auth=_Auth(credentials), timeout=timeout, follow_redirects=True, trust_env=False)
        # The SDK's own key handling is bypassed by `_Auth`; "-" only keeps it from reading the environment.
        self.sdk = LabelStudio(base_url=self.url, api_key="-", httpx_client=http, timeout=timeout)

    def info(self) -> ProjectInfo:
        p = self._call(lambda: self.sdk.projects.get(id=self.id), f"reading project {self.id}")
        return ProjectInfo(id=self.id, title=p.title or "", label_config=p.label_config or "",
                           model_version=p.model_version or "",
                           retrieves_on_listing=bool(getattr(p, "evaluate_predictions_automatically", False)))

    def tasks(self, query: str | None = None, fields: str = "task_only", view: int | None = None,
              page_size: int | None = None) -> Iterator[dict]:
        """Every task of the project (or of `view`) matching `query`, as plain dicts, in id order."""
        kwargs: dict[str, Any] = {"fields": fields, "page_size": page_size or self.page_size}
        if view is not None:
            kwargs["view"] = view
        else:
            kwargs["project"] = self.id
        if query is not None:
            kwargs["query"] = query
        size = kwargs["page_size"]
        for page in range(1, 1_000_000):
            try:
                items = self._call(lambda: self.sdk.tasks.list(page=page, **kwargs).items or [], "listing tasks")
            except LabelStudioError as exc:
                if exc.status == 404 and page > 1:   # Label Studio's answer past the last page
                    return
                raise
            for task in items:
                yield task.dict() if hasattr(task, "dict") else dict(task)
            if len(items) < size:
                return

    def view_task_ids(self, view: int) -> set[int]:
        return {t["id"] for t in self.tasks(view=view)}

    def partition(self, mv: str) -> tuple[list[dict], list[int]]:
        """(tasks with no prediction of model version exactly `mv`, ids of the tasks with one).

        The Data Manager filter matches substrings, so the tasks it puts aside (some version
        *contains* `mv`) are checked against their listed versions, and in full where that list
        was cut.
        """
        pending = list(self.tasks(_query([_filter(mv, "not_contains")])))
        done, unsure = [], []
        for task in self.tasks(_query([_filter(mv, "contains")])):
            versions = listed_versions(task)
            if versions is not None and mv in versions:
                done.append(task["id"])
            else:
                unsure.append(task["id"])
        for start in range(0, len(unsure), self.page_size):
            for task in self.tasks(_query(ids=unsure[start:start + self.page_size]), fields="all"):
                if count_version(task, mv):
                    done.append(task["id"])
                else:
                    pending.append(task)
        return sorted(pending, key=lambda t: t["id"]), sorted(done)

    def version_counts(self, task_ids: Sequence[int], mv: str) -> dict[int, int]:
        """Predictions of exactly `mv` per task id (read fresh; every id gets an entry)."""
        counts = {int(t): 0 for t in task_ids}
        ids = list(counts)
        for start in range(0, len(ids), self.page_size):
            part = ids[start:start + self.page_size]
            for task in self.tasks(_query([_filter(mv, "contains")], ids=part), fields="all"):
                if task["id"] in counts:
                    counts[task["id"]] = count_version(task, mv)
        return counts

    def import_predictions(self, predictions: Sequence[dict]) -> int:
        """POST one bulk import (never retried); returns Label Studio's `created` count.

        Raises AmbiguousWrite when the outcome is unknown, LabelStudioError when refused.
        """
        try:
            r = self.sdk.projects.import_predictions(id=self.id, request=list(predictions),
                                                     request_options={"max_retries": 0})
        except httpx.HTTPError as exc:
            raise AmbiguousWrite(f"the prediction import got no answer ({type(exc).__name__})") from None
        except ApiError as exc:
            if exc.status_code is not None and (exc.status_code >= 500 or exc.status_code in (408, 429)):
                raise AmbiguousWrite(f"the prediction import answered HTTP {exc.status_code}") from None
            raise LabelStudioError(_api_message(exc, "importing predictions"), exc.status_code) from None
        return int(r.created or 0)

    def set_model_version(self, mv: str) -> None:
        self._call(lambda: self.sdk.projects.update(id=self.id, model_version=mv), "setting the model version")

    def _call(self, fn, what: str):
        try:
            return fn()
        except ApiError as exc:
            raise LabelStudioError(_api_message(exc, what), exc.status_code) from None
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"{what}: cannot reach Label Studio at {self.url} ({type(exc).__name__})") from None


def _api_message(exc: ApiError, what: str) -> str:
    code = exc.status_code
    if code == 401:
        return f"{what}: Label Studio answered 401 (the API key is wrong, revoked, or of a disabled kind)"
    if code == 403:
        return f"{what}: Label Studio answered 403 (this user may not do that)"
    if code == 404:
        return f"{what}: Label Studio answered 404 (no such project, view or task)"
    body = exc.body if isinstance(exc.body, (str, dict, list)) else ""
    return f"{what}: Label Studio answered HTTP {code}: {json.dumps(body)[:300]}"


def parse_id_ranges(text: str) -> list[int]:
    """"1,5,9-20" -> [1, 5, 9, ..., 20] (sorted, unique); ValueError names the bad part."""
    ids: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise ValueError(f"--tasks: {part!r} is not a task id or a range like 9-20") from None
        if a < 1 or b < a:
            raise ValueError(f"--tasks: {part!r} is not a valid range of positive ids")
        if b - a > 10_000_000:
            raise ValueError(f"--tasks: the range {part!r} is too large")
        ids.update(range(a, b + 1))
    if not ids:
        raise ValueError("--tasks names no task")
    return sorted(ids)
