"""Image fetching limits: host allow-list (also after redirects), byte cap, timeout, pixel cap."""
from __future__ import annotations

import pytest

from backend.images import HostPolicy, ImageError, ImageLoader, decode_image
from backend.settings import Settings

from backend_fixtures import TOKEN, person_image


def loader(fake_ls, **kw) -> ImageLoader:
    return ImageLoader(Settings(fetch_timeout=1.0, **kw).image_source(hostname=fake_ls.url, access_token=TOKEN))


def test_host_policy():
    policy = HostPolicy.build("http://ls.internal:8080", ("cdn.example.org", "img.example.org:8443"))
    assert policy.permits("http://ls.internal:8080/data/upload/1/a.jpg")
    assert not policy.permits("http://ls.internal:9999/x")          # same host, other port
    assert policy.permits("https://cdn.example.org/a.jpg") and policy.permits("https://img.example.org:8443/a")
    assert not policy.permits("http://127.0.0.1/x") and not policy.permits("ftp://cdn.example.org/a")


def test_upload_is_fetched_with_the_token_and_decoded(fake_ls):
    img = loader(fake_ls).load("/data/upload/3/abc-person.jpg", task_id=3)
    assert img.shape == (480, 640, 3) and img.dtype.name == "uint8"
    assert ("/data/upload/3/abc-person.jpg", f"Token {TOKEN}") in fake_ls.requests


def test_redirect_to_an_unlisted_host_is_refused(fake_ls):
    with pytest.raises(ImageError, match="refusing"):
        loader(fake_ls).fetch_bytes(fake_ls.url + "/redirect-out", task_id=1)


def test_byte_cap_stops_a_stream_without_length(fake_ls):
    with pytest.raises(ImageError, match="MAX_IMAGE_BYTES"):
        loader(fake_ls, max_image_bytes=100_000).fetch_bytes(fake_ls.url + "/huge", task_id=1)


def test_timeout(fake_ls):
    with pytest.raises(ImageError, match="timed out"):
        loader(fake_ls).fetch_bytes(fake_ls.url + "/slow", task_id=1)


def test_allow_list_admits_extra_hosts_only(fake_ls):
    other = ImageLoader(Settings(label_studio_url="http://ls.invalid:1").image_source(hostname=fake_ls.url))
    with pytest.raises(ImageError, match="refusing"):
        other.fetch_bytes(fake_ls.url + "/public/a.jpg", task_id=None)
    host = fake_ls.url.split("//")[1]
    listed = ImageLoader(Settings(label_studio_url="http://ls.invalid:1", allowed_hosts=(host,)).image_source())
    assert len(listed.fetch_bytes(fake_ls.url + "/public/a.jpg", task_id=None)) > 1000


def test_pixel_cap_and_garbage():
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):
        decode_image(person_image(640, 480), max_pixels=640 * 480 - 1)
    with pytest.raises(ImageError, match="cannot be decoded"):
        decode_image(b"\x89PNG not really", max_pixels=10**8)
    assert decode_image(person_image(64, 32, exif_orientation=8), 10**8).shape == (64, 32, 3)
