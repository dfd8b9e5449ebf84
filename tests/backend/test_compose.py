"""docker-compose.yml as Debian's `docker-compose config` reads it, and its Label Studio SSRF
settings parsed by Label Studio's own settings helpers and checked with its own `validate_ip`
(from .venv-ls): the compose network, and nothing else that was banned, becomes reachable."""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from servers import REPO

LS_PYTHON = REPO / ".venv-ls" / "bin" / "python"
SECRETS = {"LABEL_STUDIO_PASSWORD": "compose-test-password", "LABEL_STUDIO_API_KEY": "ab" * 20}

# Runs in .venv-ls with the compose environment: Label Studio's parsing, Label Studio's check.
PROBE = """
import json, os, pathlib, sys
import label_studio
sys.path.insert(0, str(pathlib.Path(label_studio.__file__).parent))
from core.utils.params import get_bool_env, get_env_list
from django.conf import settings
settings.configure(USE_DEFAULT_BANNED_SUBNETS=get_bool_env("USE_DEFAULT_BANNED_SUBNETS", True),
                   USER_ADDITIONAL_BANNED_SUBNETS=get_env_list("USER_ADDITIONAL_BANNED_SUBNETS", default=[]))
from core.utils.exceptions import SsrfBlockedUrlError
from core.utils.io import validate_ip
def allowed(ip):
    try:
        validate_ip(ip)
        return True
    except SsrfBlockedUrlError:
        return False
print(json.dumps({"ssrf_protection": get_bool_env("SSRF_PROTECTION_ENABLED", True),
                  "ml_block_local_ip": get_bool_env("ML_BLOCK_LOCAL_IP", True),
                  "allowed": {ip: allowed(ip) for ip in json.load(sys.stdin)}}))
"""


def compose(*args: str, env: dict[str, str] = SECRETS) -> subprocess.CompletedProcess:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose missing: run scripts/bootstrap_docker.sh as root")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "CLICKPOSE", "COMPOSE"))}
    return subprocess.run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), *args], cwd=REPO,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def config() -> dict:
    done = compose("config")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def probe(env: dict[str, str], ips: list[str]) -> dict:
    if not LS_PYTHON.exists():
        pytest.skip(f"{LS_PYTHON} is missing: run scripts/bootstrap_ls.sh (scripts/test.sh does)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "HEARTEX", "DJANGO"))}
    done = subprocess.run([str(LS_PYTHON), "-c", PROBE], input=json.dumps(ips), env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_compose_file_is_valid_and_refuses_to_start_without_secrets(config):
    assert set(config["services"]) == {"label-studio", "clickpose"}
    backend = config["services"]["clickpose"]
    assert os.path.samefile(backend["build"]["context"], REPO)
    assert "ports" not in backend, "the backend is reached on the compose network, not published"
    assert backend["read_only"] is True and backend["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    missing = compose("config", env={"LABEL_STUDIO_API_KEY": SECRETS["LABEL_STUDIO_API_KEY"]})
    assert missing.returncode != 0 and "set LABEL_STUDIO_PASSWORD" in missing.stderr


def test_label_studio_may_call_the_compose_network_and_nothing_else_it_banned(config):
    env = {k: str(v) for k, v in config["services"]["label-studio"]["environment"].items()}
    subnet = ipaddress.ip_network(config["networks"]["clickpose"]["ipam"]["config"][0]["subnet"])
    inside = [str(subnet[i]) for i in (1, 2, 3, subnet.num_addresses - 2)]
    rng = np.random.default_rng(0)
    private = ipaddress.ip_network("172.16.0.0/12")
    sampled = [str(private[int(i)]) for i in rng.integers(0, private.num_addresses, 300)]
    others = ["127.0.0.1", "0.0.0.0", "10.0.0.1", "172.16.0.1", "172.17.0.1", "172.31.255.254",
              str(subnet[0] - 1), str(subnet[-1] + 1), "192.168.1.1", "169.254.169.254", "100.64.0.1",
              "224.0.0.1", "255.255.255.255", "::1", "fc00::1", "fe80::1", "::ffff:127.0.0.1",
              "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", *sampled]
    others = [ip for ip in others if ipaddress.ip_address(ip) not in subnet]
    ours, default = probe(env, inside + others), probe({}, inside + others)

    assert ours["ssrf_protection"] and ours["ml_block_local_ip"], "SSRF protection must stay on"
    assert all(ours["allowed"][ip] for ip in inside), ours["allowed"]
    assert not any(default["allowed"][ip] for ip in inside), "the subnet is banned by default: a real hole"
    changed = [ip for ip in others if ours["allowed"][ip] != default["allowed"][ip]]
    assert not changed, f"outside {subnet} the compose settings must ban exactly what Label Studio bans: {changed}"
    assert not ours["allowed"]["169.254.169.254"] and not ours["allowed"]["127.0.0.1"]
