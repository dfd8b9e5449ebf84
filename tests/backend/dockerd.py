"""A private Docker daemon for the container test, and a base image made without a registry.

The daemon is Debian's `dockerd` with its own data root (a tmpfs), exec root and socket under one
temporary folder. It creates no bridge, no iptables/nft rules and no published ports (`--bridge none
--iptables=false`): containers use the host's network namespace and bind 127.0.0.1 only, so every
connection of the test stays on loopback. Stopping it (by PID) and removing the folder leaves the
host as it was; `Dockerd.left_behind` lists anything that is not.

The base image is made from Debian packages with `mmdebstrap` and `docker import` (no registry
is reachable here), with the host's CA certificates inside so `pip` in a build trusts what the
host trusts.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TOOLS = ("dockerd", "docker", "mmdebstrap")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")


def missing_tools() -> list[str]:
    """What `scripts/bootstrap_docker.sh` installs, if absent; plus 'root' when not root."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    return missing + (["root (dockerd and mmdebstrap need it)"] if os.geteuid() != 0 else [])


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(path))]


@dataclass
class Dockerd:
    """One dockerd; `docker(...)` runs the client against it. Use as a context manager."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="clickpose-dockerd-", dir="/tmp")))
    proc: subprocess.Popen | None = None
    links_before: set[str] = field(default_factory=_links)

    @property
    def socket(self) -> str:
        return f"unix://{self.root}/docker.sock"

    def start(self, timeout: float = 60, tmpfs_size: str = "10g") -> "Dockerd":
        try:
            # Images live in memory: unmounting frees them at once (deleting ~100k files on disk took minutes).
            (self.root / "data").mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size},mode=0710", "clickpose-dockerd",
                            str(self.root / "data")], check=True)
            log = (self.root / "dockerd.log").open("wb")
            self.proc = subprocess.Popen(
                ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                 "--pidfile", str(self.root / "dockerd.pid"), "--host", self.socket,
                 "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self._wait_up(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_up(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if subprocess.run(["docker", "-H", self.socket, "version"], capture_output=True).returncode == 0:
                return
            time.sleep(0.5)
        raise TimeoutError(f"dockerd not up after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        path = self.root / "dockerd.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def docker(self, *args: str, timeout: float = 120, check: bool = True,
               input_text: str | None = None) -> subprocess.CompletedProcess:
        """Run `docker -H <our socket> args...`; on failure the error names the command and its output."""
        cmd = ["docker", "-H", self.socket, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text,
                              env={**os.environ, "DOCKER_BUILDKIT": "0"})   # the classic builder
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} -> {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return done

    def stop(self) -> None:
        """Stop our containers and the daemon (by PID), remove its folder; nothing is left behind."""
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for mount in sorted(_mounts_under(self.root), key=len, reverse=True):   # the tmpfs last
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        for link in _links() - self.links_before:   # none is expected: --bridge none
            if link.startswith(("docker", "br-", "veth")):
                subprocess.run(["ip", "link", "delete", link], check=False)

    def left_behind(self) -> list[str]:
        """What of this daemon is still on the host after `stop` (expected: nothing)."""
        return ([f"process {self.proc.pid}"] if self.proc is not None and self.proc.poll() is None else []) \
            + ([str(self.root)] if self.root.exists() else []) + _mounts_under(self.root) \
            + [f"network interface {n}" for n in sorted(_links() - self.links_before)]

    def __enter__(self) -> "Dockerd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def make_base_image(dockerd: Dockerd, tag: str, suite: str = "bookworm", timeout: float = 600) -> None:
    """A minimal Debian image with Python (what `python:3.11-slim` gives) from Debian packages."""
    tar = dockerd.root / "rootfs.tar"
    hook = ("for c in /usr/local/share/ca-certificates/*.crt; do [ -e \"$c\" ] && cp \"$c\" "
            "\"$1/usr/local/share/ca-certificates/\"; done; chroot \"$1\" update-ca-certificates >/dev/null")
    subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                    "--customize-hook", hook, "--customize-hook", "rm -rf \"$1\"/var/lib/apt/lists/*",
                    suite, str(tar)], check=True, timeout=timeout, capture_output=True)
    dockerd.docker("import", "--change", "CMD [\"/bin/bash\"]", str(tar), tag, timeout=timeout)
    tar.unlink()
