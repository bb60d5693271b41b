"""``epigraf view``'s HTTP API with a tiny model: frames equal ``epigraf generate``, errors are clear JSON, other
origins are refused, superseded requests are dropped, tri-planes are cached, meshes download, the command starts."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from epigraf.checkpoint import load_checkpoint, save_checkpoint
from epigraf.cli import main
from epigraf.geometry import extract_geometry
from epigraf.nn.generator import Generator
from epigraf.seeds import seeds_to_ws
from epigraf.viewer import Renderer, ViewerServer
from epigraf.viewer.params import FrameRequest, Sequencing, latent, parse_frame
from epigraf.viewer.session import Superseded, fov_range
from test_checkpoint import tiny_model_config


def tiny_checkpoint(path, c_dim: int = 0):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    cfg = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, c_dim=c_dim))
    return save_checkpoint(path, cfg, G_ema=Generator(cfg.generator))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("viewer") / "net.safetensors")


@pytest.fixture(scope="module")
def server(checkpoint):
    renderer = Renderer(load_checkpoint(checkpoint).G_ema, cache_size=2, max_resolution=64, name="tiny",
                        checkpoint=str(checkpoint))
    srv = ViewerServer(renderer, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def get(server, path, headers=None):
    """→ (status, headers, body bytes); error statuses are returned, not raised."""
    req = urllib.request.Request(server.url.rstrip("/") + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def generated(checkpoint, tmp_path, *args) -> dict[str, np.ndarray]:
    """Files `epigraf generate` writes for these flags: name → pixels."""
    out = tmp_path / "generated"
    assert main(["generate", "--checkpoint", str(checkpoint), "--device", "cpu", "--out", str(out), *args]) == 0
    return {p.name: np.asarray(Image.open(p)) for p in out.glob("*.png")}


def test_info_describes_the_model(server):
    status, headers, body = get(server, "/api/info")
    info = json.loads(body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert info["image_resolution"] == 32 and info["c_dim"] == 0 and info["max_resolution"] == 64
    assert info["fov_min"] < info["fov"] <= info["fov_max"]
    assert info["truncation"] == 0.7 and info["ray_step_multiplier"] == 2
    assert info["modes"] == ["rgb", "depth", "normals"]


def test_page_and_scripts_are_served(server):
    status, headers, body = get(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"] and b"viewer.js" in body
    for name in ("/viewer.js", "/viewer.css"):
        assert get(server, name)[0] == 200


@pytest.mark.parametrize("mode, flag", [("rgb", None), ("depth", "--depth"), ("normals", "--normals")])
def test_frame_equals_epigraf_generate(server, checkpoint, tmp_path, mode, flag):
    camera = {"yaw": "0.4", "pitch": "1.3", "fov": "10.5"}
    status, headers, body = get(server, f"/api/frame?seed=5&psi=0.6&res=24&steps=1&mode={mode}&"
                                        + "&".join(f"{k}={v}" for k, v in camera.items()))
    assert status == 200 and headers["Content-Type"] == "image/png"
    files = generated(checkpoint, tmp_path, "--seeds", "5", "--truncation", "0.6", "--resolution", "24",
                      "--ray-step-multiplier", "1", *[f"--{k}={v}" for k, v in camera.items()],
                      *([flag] if flag else []))
    name = "seed0005.png" if flag is None else f"seed0005_{mode}.png"
    assert png(body).shape == (24, 24, 3)
    np.testing.assert_array_equal(png(body), files[name])


def test_default_frame_is_generates_default(server, checkpoint, tmp_path):
    """No parameters: seed 0, the model's camera and resolution, ψ 0.7, ray steps × 2 — generate's defaults."""
    status, _, body = get(server, "/api/frame")
    assert status == 200
    np.testing.assert_array_equal(png(body), generated(checkpoint, tmp_path)["seed0000.png"])


def test_jpeg_frames_and_resolution(server):
    status, headers, body = get(server, "/api/frame?res=16&format=jpeg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == (16, 16)
    assert float(headers["X-Render-Ms"]) >= 0


def test_different_cameras_give_different_frames(server):
    a, b = (get(server, f"/api/frame?yaw={y}&res=16")[2] for y in (0, 0.8))
    assert not np.array_equal(png(a), png(b))


@pytest.mark.parametrize("query, message", [
    ("seed=abc", "seed must be an integer, got 'abc'"),
    ("seed=-1", "seed must be in [0, 4294967295], got -1"),
    ("pitch=4", "pitch must be in [0, 3.14159] radians"),
    ("fov=90", "fov must be in"),
    ("res=4", "res must be in [8, 64] pixels"),
    ("res=100000", "res must be in [8, 64] pixels"),
    ("steps=0", "steps must be in [1, 8]"),
    ("mode=xray", "mode must be one of rgb, depth, normals"),
    ("format=gif", "format must be one of png, jpeg"),
    ("class=1", "this model is unconditional"),
    ("mix=0.5", "mix needs seed2"),
    ("seed2=3&mix=2", "mix must be in [0, 1]"),
    ("yaw=nan", "yaw must be finite"),
    ("psi=5", "psi must be in [-1, 2]"),
    ("yaw2=1", "unknown parameter(s): yaw2"),
    ("seed=1&seed=2", "given more than once: seed"),
    ("client=tab", "client and seq go together"),
    ("client=a%20b&seq=1", "client must be"),
])
def test_bad_parameters_are_clear_json_errors(server, query, message):
    status, headers, body = get(server, f"/api/frame?{query}")
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert message in json.loads(body)["error"]


def test_unknown_path_is_a_json_404(server):
    status, _, body = get(server, "/api/nothing")
    assert status == 404 and "no such page" in json.loads(body)["error"]


@pytest.mark.parametrize("headers, message", [
    ({"Origin": "http://evil.example"}, "requests from http://evil.example are not allowed"),
    ({"Host": "evil.example:80"}, "is not this viewer's address"),
    ({"Sec-Fetch-Site": "cross-site"}, "cross-site requests are not allowed"),
    ({"Sec-Fetch-Site": "same-site"}, "same-site requests are not allowed"),
])
def test_other_origins_are_refused(server, headers, message):
    for path in ("/api/frame?res=8", "/api/info", "/"):
        status, _, body = get(server, path, headers)
        assert status == 403 and message in json.loads(body)["error"]


def test_own_origin_is_accepted(server):
    origin = server.url.rstrip("/")
    port = server.server_address[1]
    for headers in ({"Origin": origin, "Sec-Fetch-Site": "same-origin"}, {"Host": f"localhost:{port}"},
                    {"Sec-Fetch-Site": "none"}):
        assert get(server, "/api/info", headers)[0] == 200


def test_stale_requests_of_a_page_are_superseded_not_those_of_other_pages(server):
    assert get(server, "/api/frame?res=8&client=tabA&seq=5")[0] == 200
    status, _, body = get(server, "/api/frame?res=8&client=tabA&seq=3")
    assert status == 409 and json.loads(body)["superseded"] is True
    assert get(server, "/api/frame?res=8&client=tabB&seq=1")[0] == 200
    assert get(server, "/api/frame?res=8&client=tabA&seq=6")[0] == 200


def test_several_pages_at_once(server):
    results = []

    def page(i):
        results.append(get(server, f"/api/frame?res=16&seed={i}&client=tab{i}&seq=1")[0])

    threads = [threading.Thread(target=page, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4


def test_mesh_download(server):
    # The untrained tiny model has no half-opaque surface: the automatic level is a clear error, a given one works.
    status, _, body = get(server, "/api/mesh?seed=3&grid=16")
    assert status == 400 and "no ray through the grid becomes half opaque" in json.loads(body)["error"]
    G = server.renderer.G
    level = float(extract_geometry(G, seeds_to_ws(G, [3]), 16, level=0.0).volume.median())
    for fmt, magic in (("ply", b"ply\nformat binary_little_endian"), ("glb", b"glTF")):
        status, headers, body = get(server, f"/api/mesh?seed=3&grid=16&format={fmt}&level={level}")
        assert status == 200 and headers["Content-Disposition"] == f'attachment; filename="seed0003.{fmt}"'
        assert body.startswith(magic)
    status, _, body = get(server, "/api/mesh?grid=4")
    assert status == 400 and "grid must be in [16, 512]" in json.loads(body)["error"]


# ----------------------------------------------------------------------------- the renderer without HTTP


@pytest.fixture(scope="module")
def renderer(checkpoint):
    return Renderer(load_checkpoint(checkpoint).G_ema, cache_size=2, max_resolution=64)


def request(renderer, query="res=8") -> FrameRequest:
    return parse_frame(query, renderer.limits)[0]


def test_triplanes_are_computed_once_per_latent_and_evicted_least_recently_used(renderer):
    renderer._scenes.clear()
    hits = [renderer.render(request(renderer, f"seed={s}&yaw={y}&res=8"))[1]
            for s, y in ((1, 0), (1, 0.5), (2, 0), (1, 1.0), (3, 0), (2, 0.2), (1, 0.1))]
    # seed 1, 1 (hit), 2, 1 (hit), 3 (evicts 2), 2 (miss, evicts 1), 1 (miss)
    assert hits == [False, True, False, True, False, False, False]


def test_a_waiting_request_is_dropped_when_a_newer_one_of_its_page_arrives(renderer):
    results: dict[int, object] = {}

    def ask(seq):
        try:
            results[seq] = renderer.frame(request(renderer), Sequencing("page", seq))
        except Superseded as err:
            results[seq] = err

    threads = []
    with renderer._model_lock:  # the model is busy: requests 1, 2, 3 queue up behind it
        for seq in (1, 2, 3):
            threads.append(threading.Thread(target=ask, args=(seq,)))
            threads[-1].start()
            deadline = time.monotonic() + 10
            while renderer._newest.get("page") != seq and time.monotonic() < deadline:
                time.sleep(0.005)
    for t in threads:
        t.join()
    assert isinstance(results[1], Superseded) and isinstance(results[2], Superseded)
    assert results[3].content_type == "image/png"


def test_interpolation_ends_are_the_seeds_and_the_middle_is_the_w_midpoint(renderer):
    def image(query):
        return renderer.render(request(renderer, f"res=12&{query}"))[0]

    a, b, mid = image("seed=1"), image("seed=2"), image("seed=1&seed2=2&mix=0.5")
    np.testing.assert_array_equal(image("seed=1&seed2=2&mix=0"), a)
    np.testing.assert_array_equal(image("seed=1&seed2=2&mix=1"), b)
    assert not np.array_equal(mid, a) and not np.array_equal(mid, b)
    assert latent(1, 0.7, None, 2, 0.5) == request(renderer, "seed=1&seed2=2&mix=0.5").latent


def test_class_picker_of_a_conditional_model_matches_generate(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "cond.safetensors", c_dim=3)
    renderer = Renderer(load_checkpoint(ckpt).G_ema, max_resolution=64)
    assert renderer.info()["c_dim"] == 3
    for query, flags in (("class=2", ["--class-index", "2"]), ("", [])):
        image = renderer.render(request(renderer, f"seed=4&res=16&{query}"))[0]
        files = generated(ckpt, tmp_path / (query or "own"), "--seeds", "4", "--resolution", "16", *flags)
        np.testing.assert_array_equal(image, files["seed0004.png"])
    with pytest.raises(ValueError, match=r"class must be in \[0, 2\]"):
        request(renderer, "class=3")


def test_zoom_range_keeps_the_frustum_inside_the_triplane_cube():
    from epigraf.config import FFHQ_CAMERA, MEGASCANS_CAMERA

    for camera in (FFHQ_CAMERA, MEGASCANS_CAMERA):
        low, high = fov_range(camera)
        assert low == camera.fov / 8 and high >= camera.fov
        # The widest corner ray at the far end of the depth window touches the cube's inscribed sphere.
        half = np.arctan(np.sqrt(2) * np.tan(np.radians(high) / 2))
        r, t = camera.radius, camera.ray_end
        far = np.sqrt(r * r + t * t - 2 * r * t * np.cos(half))
        assert far == pytest.approx(camera.cube_scale, rel=1e-6)


# ----------------------------------------------------------------------------- the command


def test_view_command_prints_the_url_and_serves(checkpoint):
    proc = subprocess.Popen([sys.executable, "-m", "epigraf.cli", "view", str(checkpoint), "--port", "0",
                             "--device", "cpu"], stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([proc.stdout], [], [], 120)[0], "epigraf view printed nothing in 120 s"
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "api/info", timeout=30) as r:
            assert json.loads(r.read())["name"] == "tiny"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_view_command_on_a_busy_port_is_a_clear_error(checkpoint, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["view", str(checkpoint), "--port", str(busy.getsockname()[1]), "--device", "cpu"]) == 2
    assert "cannot serve on 127.0.0.1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bounds on connections and work


def test_an_idle_connection_is_closed_after_the_timeout(checkpoint):
    srv = ViewerServer(Renderer(load_checkpoint(checkpoint).G_ema, max_resolution=64), "127.0.0.1", 0,
                       idle_timeout_s=0.5)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(srv.server_address[:2], timeout=30) as conn:
            start = time.perf_counter()
            assert conn.recv(1024) == b""  # the server closed it: the connection sent nothing
            assert time.perf_counter() - start < 10
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_a_wildcard_bind_lists_and_accepts_the_machines_addresses(checkpoint, monkeypatch):
    from epigraf.viewer import server as server_mod

    monkeypatch.setattr(server_mod, "machine_addresses", lambda ipv6=False: ["10.9.8.7"])
    renderer = Renderer(load_checkpoint(checkpoint).G_ema, cache_size=1, max_resolution=16, name="tiny")
    srv = ViewerServer(renderer, "0.0.0.0", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        port = srv.server_address[1]
        assert srv.url == f"http://127.0.0.1:{port}/" and srv.other_urls == [f"http://10.9.8.7:{port}/"]
        assert get(srv, "/api/info", {"Host": f"10.9.8.7:{port}"})[0] == 200
        assert get(srv, "/api/info", {"Host": f"10.9.8.6:{port}"})[0] == 403
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_requests_beyond_the_work_bounds_are_clear_400s(checkpoint):
    srv = ViewerServer(Renderer(load_checkpoint(checkpoint).G_ema, max_resolution=4096), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        start = time.perf_counter()
        status, _, body = get(srv, "/api/frame?res=4096&steps=8")
        assert status == 400 and json.loads(body)["error"] == (
            "this frame needs 1,073,741,824 ray samples, over the 134,217,728 a request may ask for; "
            "lower res or steps")
        status, _, body = get(srv, "/api/mesh?grid=512")
        assert status == 400 and "this mesh needs 134,217,728 grid points, over the 16,777,216" in \
            json.loads(body)["error"]
        assert time.perf_counter() - start < 5
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_a_request_slower_than_the_time_bound_at_the_measured_speed_is_refused(checkpoint):
    renderer = Renderer(load_checkpoint(checkpoint).G_ema, max_resolution=64, max_request_s=1e-9)
    renderer.frame(request(renderer, "res=8"))  # tri-planes: a miss, not a measure of rendering speed
    renderer.frame(request(renderer, "res=8&yaw=0.1"))
    with pytest.raises(ValueError, match=r"this frame would take ~\d+ s on this machine, over the 0 s a request "
                                         r"may take; lower res or steps"):
        renderer.frame(request(renderer, "res=16"))


def test_a_frame_whose_page_has_gone_is_not_rendered(renderer):
    frames = renderer.stats()["frames"]
    with pytest.raises(Superseded, match="closed the connection"):
        renderer.frame(request(renderer, "res=8"), client_gone=lambda: True)
    assert renderer.stats()["frames"] == frames


def test_machine_addresses_are_not_loopback():
    from epigraf.viewer.server import machine_addresses

    assert all(not a.startswith("127.") and a != "::1" for a in machine_addresses(ipv6=True))


def test_a_loopback_bind_lists_no_other_addresses(server):
    assert server.other_urls == []


def test_the_page_names_its_icon_inline_and_hidden_controls_stay_hidden(server):
    """No /favicon.ico request (a console 404), and CSS cannot override the `hidden` attribute (the class row of
    an unconditional model showed as an empty dropdown). test_viewer_e2e checks both in a browser."""
    page = get(server, "/")[2].decode()
    assert re.search(r'<link rel="icon" href="data:image/svg\+xml,', page)
    css = get(server, "/viewer.css")[2].decode()
    assert "[hidden] { display: none !important; }" in css
