"""Weights resolution and download (against a local HTTP server only; no internet)."""
import hashlib
import http.server
import logging
import os
import threading

import pytest

from clickpose_core import weights as W

PAYLOAD = bytes(range(256)) * 40  # 10 KiB


class _Handler(http.server.BaseHTTPRequestHandler):
    honour_range = True
    content_type = "application/octet-stream"
    seen_ranges: list = []

    def do_GET(self):  # noqa: N802 (http.server naming)
        rng = self.headers.get("Range")
        type(self).seen_ranges.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng and self.honour_range else 0
        if start >= len(PAYLOAD) and rng:
            self.send_response(416)
            self.end_headers()
            return
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.seen_ranges = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file.pth", _Handler
    httpd.shutdown()
    httpd.server_close()
    _Handler.honour_range, _Handler.content_type = True, "application/octet-stream"


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verifies_and_renames(tmp_path, server):
    url, _ = server
    path = W.download_official("interactive", tmp_path, url=url, expected_sha256=SHA)
    assert path == str(tmp_path / "ClickPose_interactive_R50.pth")
    assert (tmp_path / "ClickPose_interactive_R50.pth").read_bytes() == PAYLOAD
    assert not (tmp_path / "ClickPose_interactive_R50.pth.part").exists()


def test_download_resumes_partial_file(tmp_path, server):
    url, handler = server
    (tmp_path / "ClickPose_model_only_R50.pth.part").write_bytes(PAYLOAD[:3000])
    W.download_official("model_only", tmp_path, url=url, expected_sha256=SHA)
    assert handler.seen_ranges == ["bytes=3000-"]
    assert (tmp_path / "ClickPose_model_only_R50.pth").read_bytes() == PAYLOAD


def test_download_restarts_when_server_ignores_range(tmp_path, server):
    url, handler = server
    handler.honour_range = False
    (tmp_path / "ClickPose_interactive_R50.pth.part").write_bytes(b"garbage" * 100)
    W.download_official("interactive", tmp_path, url=url, expected_sha256=SHA)
    assert (tmp_path / "ClickPose_interactive_R50.pth").read_bytes() == PAYLOAD


def test_download_with_complete_part_file(tmp_path, server):
    url, _ = server
    (tmp_path / "ClickPose_interactive_R50.pth.part").write_bytes(PAYLOAD)
    W.download_official("interactive", tmp_path, url=url, expected_sha256=SHA)
    assert (tmp_path / "ClickPose_interactive_R50.pth").read_bytes() == PAYLOAD


def test_download_hash_mismatch_deletes_part(tmp_path, server):
    url, _ = server
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        W.download_official("interactive", tmp_path, url=url, expected_sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_download_refuses_html_pages(tmp_path, server):
    url, handler = server
    handler.content_type = "text/html; charset=utf-8"
    with pytest.raises(RuntimeError, match="web page instead of"):
        W.download_official("interactive", tmp_path, url=url)
    assert not (tmp_path / "ClickPose_interactive_R50.pth").exists()


def test_download_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="unknown official weights 'r101'"):
        W.download_official("r101", tmp_path)


def test_resolve_prefers_official_then_demo(tmp_path, caplog):
    with pytest.raises(W.WeightsNotFound, match="ClickPose_interactive_R50.pth.*download_official"):
        W.resolve_default(tmp_path)
    (tmp_path / W.DEMO_FILE).write_bytes(b"demo")
    info = W.resolve_default(tmp_path)
    assert info.kind == "demo"
    assert info.model_version == "clickpose-demo@" + hashlib.sha256(b"demo").hexdigest()[:12]
    (tmp_path / "ClickPose_interactive_R50.pth").write_bytes(b"official")
    info = W.resolve_default(tmp_path)
    assert info.kind == "official" and info.licence == W.IDEA_LICENCE
    assert info.model_version == ("clickpose-r50-interactive@"
                                  + hashlib.sha256(b"official").hexdigest()[:12])
    with caplog.at_level(logging.WARNING, logger="clickpose_core.weights"):
        W.announce(info)
    assert "IDEA License 1.0" in caplog.text and "non-commercial" in caplog.text
    assert info.model_version in caplog.text


def test_describe_custom(tmp_path):
    p = tmp_path / "finetuned.pth"
    p.write_bytes(b"x")
    info = W.describe_weights(p, licence="CC-BY-4.0")
    assert info.kind == "custom" and info.licence == "CC-BY-4.0"
    assert info.model_version.startswith("clickpose-custom-finetuned@")
    assert info.to_dict()["sha256"] == hashlib.sha256(b"x").hexdigest()


def test_default_folder_is_the_checkout_not_the_cwd(tmp_path, monkeypatch):
    """Tools started elsewhere (cvat-cli, cron) find the checkout's weights/; ./weights is the fallback."""
    monkeypatch.chdir(tmp_path)
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
    assert W.CHECKOUT_WEIGHTS_DIR == checkout
    assert os.path.dirname(W.resolve_default().path) == checkout
    monkeypatch.setattr(W, "CHECKOUT_WEIGHTS_DIR", str(tmp_path / "gone"))
    with pytest.raises(W.WeightsNotFound, match="no weights in .*gone.* or .*weights"):
        W.resolve_default()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / W.DEMO_FILE).write_bytes(b"demo")
    assert W.resolve_default().path == str(tmp_path / "weights" / W.DEMO_FILE)
