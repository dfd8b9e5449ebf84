"""Fuzz: several hundred malformed bodies derived from the recorded Label Studio payloads, through every
POST route. Whatever arrives, the answer is < 500, carries no traceback, and nothing is logged as an
unhandled error. Deterministic (fixed seed) and bounded (a fixed number of cases, loopback only)."""
from __future__ import annotations

import copy
import json
import logging
import random

import pytest

from backend.app import create_app
from backend.settings import Settings

from backend_fixtures import FIXTURES, TOKEN

CASES = 320
SEED = 20261201

HOSTILE = [
    None, True, False, 0, -1, 10 ** 30, -(10 ** 400), 1e308, float("nan"), float("inf"), "", "\ud800", "x" * 5000,
    [], {}, [None], {"": None}, "1.2.3", "0", "-5",
    "http://127.0.0.1:1\\@127.0.0.1:2/x.jpg", "file:///etc/passwd", "s3://bucket/key.jpg", "gs://b/k",
    "http://[::1]:99999/x", "http://127.0.0.1:+80/x", "ftp://x/y", "http://user:pw@127.0.0.1/x", "/data/../../etc",
    "<View><Image", '<?xml version="1.0" encoding="latin-1"?><View/>', "<!DOCTYPE x [<!ENTITY a 'b'>]><View/>",
]


def recorded_bodies() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        request = json.loads(path.read_text())["request"]
        if request.get("method") == "POST" and isinstance(request.get("json"), dict):
            out.append((request["path"], request["json"]))
    return out


def containers(value, max_depth: int = 60):
    """Every (container, key) inside a JSON value, down to `max_depth` levels."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= max_depth:
            continue
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else ()
        for k in keys:
            yield node, k
            stack.append((node[k], depth + 1))


def nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def mutate(rng: random.Random, body: dict) -> dict:
    body = copy.deepcopy(body)
    for _ in range(rng.randint(1, 3)):
        spots = list(containers(body))
        if not spots:
            break
        parent, key = rng.choice(spots)
        op = rng.random()
        if op < 0.2 and isinstance(parent, dict):
            del parent[key]
        elif op < 0.75:
            parent[key] = copy.deepcopy(rng.choice(HOSTILE))
        elif op < 0.85:
            parent[key] = [parent[key]] * rng.randint(2, 50)
        elif op < 0.93:
            parent[key] = nested(rng.choice([50, 900, 3000]))
        else:
            parent[key] = {"unexpected": parent[key]}
    return body


def encode(rng: random.Random, body: dict) -> bytes:
    try:
        raw = json.dumps(body).encode()          # NaN/Infinity literals on purpose: Python's parser takes them
    except (ValueError, RecursionError):
        raw = b"{}"
    roll = rng.random()
    if roll < 0.08:
        raw = raw[: rng.randrange(len(raw))]      # truncated
    elif roll < 0.14:
        i = rng.randrange(len(raw))
        raw = raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]   # one byte flipped
    return raw


@pytest.fixture()
def client(tiny_checkpoint, fake_ls):
    app = create_app(Settings(weights=tiny_checkpoint, score_threshold=0.0, cache_size=8, fetch_timeout=2.0,
                              fetch_deadline=3.0))
    client = app.test_client()
    setup = dict(recorded_bodies()[0][1], hostname=fake_ls.url, access_token=TOKEN)
    assert client.post("/setup", json=setup).status_code == 200
    return client


def test_malformed_bodies_never_get_a_5xx_or_a_traceback(client, caplog):
    rng = random.Random(SEED)
    bodies = recorded_bodies()
    assert {path for path, _ in bodies} == {"/setup", "/predict", "/webhook"}
    statuses: dict[int, int] = {}
    caplog.set_level(logging.ERROR, logger="backend")
    for case in range(CASES):
        path, body = bodies[rng.randrange(len(bodies))]
        raw = encode(rng, mutate(rng, body))
        r = client.post(path, data=raw, content_type="application/json")
        text = r.get_data(as_text=True)
        assert r.status_code < 500, f"case {case} {path}: {r.status_code} {text[:300]}\nbody: {raw[:300]!r}"
        assert "Traceback" not in text and "site-packages" not in text, f"case {case}: {text[:300]}"
        if r.status_code >= 400:
            assert isinstance(r.get_json().get("error"), str), f"case {case}: {text[:300]}"
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    unhandled = [rec.getMessage() for rec in caplog.records if "unhandled error" in rec.getMessage()]
    assert not unhandled, unhandled[:3]
    # The generator reaches both sides: accepted bodies and each kind of refusal.
    assert statuses.get(200, 0) > 20 and statuses.get(400, 0) > 20, statuses
    print(f"fuzz: {CASES} cases, statuses {dict(sorted(statuses.items()))}")
