"""Shared helpers of tests/backend: recorded Label Studio payloads, a tiny random Click-Pose checkpoint, and a
fake Label Studio file server on 127.0.0.1 that checks the token like /data/upload does."""
from __future__ import annotations

import copy
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image, ImageDraw

FIXTURES = Path(__file__).parent / "fixtures"
TOKEN = "test-legacy-token-0123456789"


def payload(name: str) -> dict:
    """The LS -> backend request body of a recorded exchange (a deep copy, safe to edit)."""
    path = next(FIXTURES.glob(f"{name}*.json"))
    return copy.deepcopy(json.loads(path.read_text())["request"]["json"])


def person_image(width: int = 640, height: int = 480, fmt: str = "JPEG", exif_orientation: int | None = None) -> bytes:
    """A synthetic image with one stick figure, encoded."""
    img = Image.new("RGB", (width, height), (40, 60, 80))
    d = ImageDraw.Draw(img)
    cx, top = width // 2, height // 6
    d.ellipse([cx - 20, top, cx + 20, top + 40], fill=(230, 200, 170))
    d.line([cx, top + 40, cx, top + 200], fill=(200, 50, 50), width=12)
    d.line([cx - 60, top + 80, cx + 60, top + 80], fill=(200, 50, 50), width=10)
    d.line([cx, top + 200, cx - 40, top + 320], fill=(50, 50, 200), width=10)
    d.line([cx, top + 200, cx + 40, top + 320], fill=(50, 50, 200), width=10)
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


class FakeLabelStudio:
    """Serves /data/upload/<project>/<file> (token required) plus a few hostile endpoints."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []   # (path, Authorization header)
        self.files: dict[str, bytes] = {}
        self.drips_open = 0                          # /drip responses still being sent
        self.drip_started = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                owner.requests.append((self.path, self.headers.get("Authorization", "")))
                if self.path.startswith("/slow"):
                    time.sleep(3)
                if self.path.startswith("/drip"):
                    # One byte every 0.25 s for 10 s: no single read ever times out.
                    owner.drips_open += 1
                    owner.drip_started.set()
                    try:
                        self.send_response(200)
                        self.send_header("Content-Length", "40")
                        self.end_headers()
                        for _ in range(40):
                            self.wfile.write(b"\0")
                            self.wfile.flush()
                            time.sleep(0.25)
                    finally:
                        owner.drips_open -= 1
                    return
                if self.path.startswith("/stall-body"):
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"\0" * 10)
                    self.wfile.flush()
                    time.sleep(3)
                    return
                if self.path.startswith("/redirect-to/"):
                    self.send_response(302)
                    self.send_header("Location", self.path[len("/redirect-to/"):].replace("%5C", "\\"))
                    self.end_headers()
                    return
                if self.path.startswith("/redirect-out"):
                    self.send_response(302)
                    self.send_header("Location", "http://10.255.255.1/secret")
                    self.end_headers()
                    return
                if self.path.startswith("/huge"):
                    self.send_response(200)
                    self.end_headers()  # no content-length: the cap must stop the stream itself
                    for _ in range(64):
                        self.wfile.write(b"\0" * 65536)
                    return
                if self.path.startswith("/data/upload/") or self.path.startswith("/public/"):
                    if self.path.startswith("/data/") and self.headers.get("Authorization") != f"Token {TOKEN}":
                        self.send_response(401)
                        self.end_headers()
                        return
                    name = self.path.rsplit("/", 1)[-1]
                    body = owner.files.get(name) or person_image()
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(404)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda *args: None  # clients hanging up on /huge is the point
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


