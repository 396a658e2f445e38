"""Loading images from every kind of reference a dataset line may hold, compared pixel for pixel with the
file opened directly by PIL; http(s) through a local server started here."""

from __future__ import annotations

import base64
import functools
import http.server
import threading

import numpy as np
import pytest
from PIL import Image

from vlft.data.media import load_image, local_video_path
from vlft.errors import DataError


def pixels(image):
    return np.asarray(image)


def expected(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def check_same(image, path):
    assert image.mode == "RGB"
    assert np.array_equal(pixels(image), expected(path))


def test_relative_path_with_base_dir(media_dir):
    check_same(load_image("a.png", media_dir), media_dir / "a.png")
    check_same(load_image("./c.jpg", media_dir), media_dir / "c.jpg")


def test_absolute_path_ignores_base_dir(media_dir, tmp_path):
    check_same(load_image(str(media_dir / "b.png")), media_dir / "b.png")
    check_same(load_image(str(media_dir / "b.png"), tmp_path), media_dir / "b.png")


def test_file_url(media_dir):
    check_same(load_image(f"file://{media_dir / 'a.png'}"), media_dir / "a.png")


def test_data_uri(media_dir):
    data = (media_dir / "b.png").read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    check_same(load_image(uri), media_dir / "b.png")


def test_data_uri_not_base64():
    with pytest.raises(DataError, match="not base64"):
        load_image("data:image/svg+xml,<svg></svg>")


def test_bare_base64_and_hf_image_dicts(media_dir):
    data = (media_dir / "a.png").read_bytes()
    check_same(load_image(base64.b64encode(data).decode()), media_dir / "a.png")
    check_same(load_image({"bytes": data, "path": None}), media_dir / "a.png")
    check_same(load_image({"bytes": None, "path": "a.png"}, media_dir), media_dir / "a.png")
    check_same(load_image(data), media_dir / "a.png")


def test_pil_images():
    rgb = Image.fromarray(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10)
    out = load_image(rgb)
    assert out.mode == "RGB" and np.array_equal(pixels(out), pixels(rgb))
    gray = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8))  # mode "L"
    out = load_image(gray)
    assert out.mode == "RGB"
    assert pixels(out).tolist() == [[[0, 0, 0], [100, 100, 100]], [[200, 200, 200], [255, 255, 255]]]


# Transparent -> white; opaque kept; half transparent black over white -> 255 * (1 - 128/255) = 127.
RGBA = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], dtype=np.uint8)
RGB_EXPECTED = np.array([[[255, 255, 255], [0, 0, 255], [127, 127, 127]]])


def test_rgba_transparent_becomes_white():
    out = pixels(load_image(Image.fromarray(RGBA, "RGBA"))).astype(int)
    assert np.abs(out - RGB_EXPECTED).max() <= 1
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [0, 0, 255]


def test_rgba_png_file(tmp_path):
    Image.fromarray(RGBA, "RGBA").save(tmp_path / "t.png")
    out = pixels(load_image("t.png", tmp_path)).astype(int)
    assert np.abs(out - RGB_EXPECTED).max() <= 1


def test_la_and_palette_transparency(tmp_path):
    la = Image.fromarray(np.array([[[0, 0], [50, 255]]], dtype=np.uint8), "LA")
    assert pixels(load_image(la)).tolist() == [[[255, 255, 255], [50, 50, 50]]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    assert pixels(load_image(str(tmp_path / "p.png"))).tolist() == [[[255, 255, 255], [10, 200, 30]]]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as info:
        load_image("nope/missing.png", tmp_path)
    assert str(tmp_path / "nope" / "missing.png") in str(info.value)


def test_corrupt_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match="corrupt") as info:
        load_image("bad.png", tmp_path)
    assert str(tmp_path / "bad.png") in str(info.value)


def test_truncated_file(tmp_path, media_dir):
    data = (media_dir / "a.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt") as info:
        load_image(str(tmp_path / "half.png"))
    assert str(tmp_path / "half.png") in str(info.value)


def test_wrong_reference_types():
    for ref in (None, 3, "", ["a.png"]):
        with pytest.raises(DataError, match="expected an image path"):
            load_image(ref)


# ---------------------------------------------------------------------------------------------------
# http(s)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def server(media_dir):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(QuietHandler, directory=str(media_dir)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def no_proxy(monkeypatch):
    # A proxy configured in the environment must not take requests to the local server.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def test_http_image(server, media_dir, no_proxy):
    check_same(load_image(f"{server}/c.jpg"), media_dir / "c.jpg")
    check_same(load_image(f"{server}/a.png", media_dir / "ignored"), media_dir / "a.png")


def test_http_404(server, no_proxy):
    url = f"{server}/missing.png"
    with pytest.raises(DataError, match="cannot download") as info:
        load_image(url)
    assert url in str(info.value) and "404" in str(info.value)


def test_http_not_an_image(server, no_proxy):
    url = f"{server}/v.mp4"
    with pytest.raises(DataError, match="corrupt") as info:
        load_image(url)
    assert url in str(info.value)


def test_http_video_is_cached_locally(server, media_dir, tmp_path, no_proxy):
    first = local_video_path(f"{server}/v.mp4", None, cache_dir=tmp_path)
    assert first.parent == tmp_path and first.suffix == ".mp4"
    assert first.read_bytes() == (media_dir / "v.mp4").read_bytes()
    data_uri = "data:video/mp4;base64," + base64.b64encode((media_dir / "v.mp4").read_bytes()).decode()
    assert local_video_path(data_uri, None, cache_dir=tmp_path) == first  # same content, same file
    assert local_video_path("v.mp4", media_dir) == media_dir / "v.mp4"
    with pytest.raises(DataError, match="file not found"):
        local_video_path("gone.mp4", media_dir)


class CutShortHandler(http.server.BaseHTTPRequestHandler):
    """Promises 100000 bytes, sends 104 and closes: a connection dropped mid-download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\x89PNG" + b"0" * 100)
        self.close_connection = True

    def log_message(self, format, *args):
        pass


def test_http_download_cut_short(no_proxy):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutShortHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(DataError, match="cannot download"):
            load_image(f"http://127.0.0.1:{httpd.server_address[1]}/a.png")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_malformed_url():
    with pytest.raises(DataError, match="cannot download"):
        load_image("http://127.0.0.1:notaport/a.png")
