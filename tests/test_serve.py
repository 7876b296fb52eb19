"""`coophash serve`: the HTTP API through a client, a real server process, and the web page in headless Chromium.

One tiny CoopHash run (digits, 16 bits, one short epoch) is trained once per session, so that the OOD score
path runs for real.  The browser test skips only when chromium / chromedriver are not installed (.ci/run
installs them).
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from coophash.api import Hasher, load_run
from coophash.codes import binarize, hamming_distance, pack_bits
from coophash.data import Manifest, load_dataset, make_protocol, prepare_pixels, read_image_file
from coophash.index import HammingIndex
from coophash.serve import SearchService, ServeConfig, create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note that it prefers httpx2 over httpx
    from fastapi.testclient import TestClient

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BITS = 16


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A CoopHash run on digits trained for one short epoch (it has an OOD score: the negative energy)."""
    run_dir = tmp_path_factory.mktemp("serve-run") / "00000-coophash-digits"
    ds = load_dataset("digits")
    mf = make_protocol(ds, seed=0, query_per_class=10, val_per_class=10, label_fraction=0.2)
    args = dict(coop_warmup_epochs=0.3, coop_ramp_epochs=0.5, coop_pairs=8, langevin_steps=2, coop_gen_width=16,
                coop_latent_dim=16)
    Hasher(method="coophash", loss="dpsh", bits=BITS, epochs=1, seed=0, run_dir=run_dir, batch_size=64,
           unlabeled_batch_size=16, label_fraction=0.2, method_args=args).fit(ds, mf)
    return run_dir


@pytest.fixture(scope="module")
def data(tiny_run):
    ds = load_dataset("digits")
    return ds, Manifest.load(tiny_run / "manifest.json")


SMALL_LIMITS = dict(max_upload_bytes=120_000, max_request_bytes=600_000, max_pixels=1_000_000, max_k=50)


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    index_file = tmp_path_factory.mktemp("serve-index") / "db.chidx"
    service = SearchService.from_run(tiny_run, ServeConfig(index_file=index_file, token=TOKEN, **SMALL_LIMITS))
    return service, TestClient(create_app(service)), index_file


def png_of(pixels: np.ndarray, scale: int = 1, mode: str | None = None, fmt: str = "PNG") -> bytes:
    """Image file bytes of uint8 (C, H, W) pixels, optionally enlarged by pixel repetition."""
    arr = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    im = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    if mode:
        im = im.convert(mode)
    out = io.BytesIO()
    im.save(out, format=fmt)
    return out.getvalue()


def library_code(run: Path, path: Path) -> tuple[np.ndarray, float]:
    """Code and OOD score of an image file computed with the library alone (the dataset reader's path)."""
    _cfg, method = load_run(run)
    x = read_image_file(path, image_size=method.info.image_size, channels=method.info.channels)[None]
    with torch.no_grad():
        code = pack_bits(binarize(method.encode(x).float()).numpy())
        ood = float(method.ood_score(x)[0])
    return code, ood


# ------------------------------------------------------------------------------------------ API
def test_healthz_stats_and_openapi_docs(served, data):
    service, client, _ = served
    _, mf = data
    assert client.get("/healthz").json() == {"status": "ok", "items": len(mf.database)}
    client.post("/search", json={"ids": [int(mf.database[0])], "k": 3})
    stats = client.get("/stats").json()
    assert stats["items"] == len(mf.database) and stats["bits"] == BITS
    assert stats["method"] == "coophash" and stats["backend"] in ("numba", "numpy", "faiss")
    assert stats["requests"] >= 2 and stats["ood_score"] is True and stats["writes_enabled"] is True
    lat = stats["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    spec = client.get("/openapi.json").json()
    for path in ("/search", "/items", "/items/{item_id}", "/items/{item_id}/image", "/healthz", "/stats"):
        assert path in spec["paths"], path
    assert set(spec["paths"]["/search"]["post"]["requestBody"]["content"]) == {"application/json",
                                                                                "multipart/form-data"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # offline: the docs page names no other host; its script and style come from this service
    assert "http://" not in docs.text and "https://" not in docs.text
    js = client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript") and len(js.content) > 1e5
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert client.get("/docs-assets/..%2F..%2F__init__.py").status_code == 404


def test_search_by_image_upload_equals_the_library(served, data, tiny_run, tmp_path):
    service, client, index_file = served
    ds, mf = data
    item = int(mf.query[3])
    path = tmp_path / "query.png"
    path.write_bytes(png_of(ds.pixels([item])[0].numpy(), scale=4))  # 32x32: the service resizes to 8x8
    code, ood = library_code(tiny_run, path)
    r = client.post("/search", files=[("images", ("query.png", path.read_bytes(), "image/png"))],
                    data={"k": "7", "labels": str(int(ds.labels[item].argmax()))})
    assert r.status_code == 200, r.text
    assert "encode;dur=" in r.headers["server-timing"] and "serialise;dur=" in r.headers["server-timing"]
    res = r.json()["results"][0]
    assert res["code"] == bytes(code[0]).hex()
    assert res["ood_score"] == pytest.approx(ood, rel=1e-5, abs=1e-5)
    D, I = HammingIndex.load(index_file).search(code, 7)
    assert [h["id"] for h in res["hits"]] == I[0].tolist()
    assert [h["distance"] for h in res["hits"]] == D[0].tolist()
    for h in res["hits"]:
        assert h["labels"] == np.flatnonzero(ds.labels[h["id"]].numpy()).tolist()
        assert h["correct"] == (h["labels"] == res["labels"])  # single-label digits
        assert h["image_url"] == f"/items/{h['id']}/image"
    # an RGB JPEG is converted to the run's one channel; the field may also be called 'image'
    jpg = png_of(ds.pixels([item])[0].numpy(), scale=4, mode="RGB", fmt="JPEG")
    r = client.post("/search", files=[("image", ("q.jpg", jpg, "image/jpeg"))], data={"k": "4"})
    assert r.status_code == 200 and len(r.json()["results"][0]["hits"]) == 4


def test_search_by_hex_base64_codes_and_ids(served, data):
    service, client, index_file = served
    ds, mf = data
    index = HammingIndex.load(index_file)
    codes = index.codes[:3]
    hexes = [bytes(c).hex() for c in codes]
    b64 = [base64.b64encode(bytes(c)).decode() for c in codes]
    by_hex = client.post("/search", json={"codes": hexes, "k": 5}).json()
    by_b64 = client.post("/search", json={"codes": b64, "encoding": "base64", "k": 5}).json()
    assert [r["hits"] for r in by_hex["results"]] == [r["hits"] for r in by_b64["results"]]
    D, I = index.search(codes, 5)
    assert [[h["id"] for h in r["hits"]] for r in by_hex["results"]] == I.tolist()
    assert [[h["distance"] for h in r["hits"]] for r in by_hex["results"]] == D.tolist()
    assert all(h["correct"] is None for r in by_hex["results"] for h in r["hits"])  # query labels unknown
    assert all(r["ood_score"] is None for r in by_hex["results"])  # a code has no image to score
    first = int(index.ids[0])
    by_id = client.post("/search", json={"ids": [first], "k": 5}).json()["results"][0]
    same_hits = [{**h, "correct": bool(set(h["labels"]) & set(by_id["labels"]))} for h in by_hex["results"][0]["hits"]]
    assert by_id["hits"] == same_hits  # the stored code of item `first` is codes[0]; its labels give the marks
    assert by_id["labels"] == np.flatnonzero(ds.labels[first].numpy()).tolist()
    assert isinstance(by_id["ood_score"], float)


def test_radius_search_returns_exactly_the_codes_within_r(served):
    _, client, index_file = served
    index = HammingIndex.load(index_file)
    q = index.codes[10:12]
    for radius in (0, 2, 4):
        body = client.post("/search", json={"codes": [bytes(c).hex() for c in q], "radius": radius}).json()
        assert body["radius"] == radius and body["k"] is None
        for qi, res in enumerate(body["results"]):
            dist = np.asarray(hamming_distance(q[qi : qi + 1], index.codes))[0]
            expect = index.ids[dist <= radius]
            hits = res["hits"]
            assert sorted(h["id"] for h in hits) == sorted(expect.tolist())
            assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
            assert all(h["distance"] == dist[np.flatnonzero(index.ids == h["id"])[0]] for h in hits)


def test_wide_radius_is_cut_at_the_hit_limit_and_flagged(tiny_run, served):
    _, _, index_file = served
    service = SearchService.from_run(tiny_run, ServeConfig(index_file=index_file, max_range_hits=5))
    client = TestClient(create_app(service))
    res = client.post("/search", json={"codes": ["0000", "ffff"], "radius": BITS}).json()["results"]
    assert all(r["truncated"] and len(r["hits"]) == 5 for r in res)
    dist = [h["distance"] for h in res[0]["hits"]]
    assert dist == sorted(dist)


def test_the_command_fails_with_one_line_on_a_bad_run_or_index(tiny_run, tmp_path):
    from click.testing import CliRunner

    from coophash.cli.serve import serve

    r = CliRunner().invoke(serve, [str(tmp_path / "no-such-run")])
    assert r.exit_code == 1 and "Error:" in r.output and "Traceback" not in r.output
    other = HammingIndex(32)
    other.save(tmp_path / "wide.chidx")
    r = CliRunner().invoke(serve, [str(tiny_run), "--index", str(tmp_path / "wide.chidx")])
    assert r.exit_code == 1 and "32-bit" in r.output and "Traceback" not in r.output


def test_item_image_is_the_dataset_png(served, data):
    _, client, _ = served
    ds, mf = data
    item = int(mf.database[5])
    r = client.get(f"/items/{item}/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(r.content)))
    np.testing.assert_array_equal(pixels, ds.pixels([item])[0, 0].numpy())
    listing = client.get("/items", params={"offset": 2, "limit": 4}).json()
    assert listing["total"] == len(mf.database)
    assert [it["id"] for it in listing["items"]] == [int(i) for i in mf.database[2:6]]


def test_page_has_no_external_assets(served):
    _, client, _ = served
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert 'id="file"' in r.text and 'id="results"' in r.text


def test_writes_need_the_bearer_token(served, data):
    service, client, index_file = served
    _, mf = data
    code = bytes(HammingIndex.load(index_file).codes[0]).hex()
    before = index_file.read_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = client.post("/items", json={"codes": [code], "ids": [777777]}, headers=headers)
        assert r.status_code == 401 and "token" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = client.delete(f"/items/{int(mf.database[0])}", headers=headers)
        assert r.status_code == 401
    assert index_file.read_bytes() == before and service.snapshot.index.ntotal == len(mf.database)


def test_add_search_delete_persists_atomically(served, data, tiny_run):
    service, client, index_file = served
    ds, mf = data
    n0 = service.snapshot.index.ntotal
    code = bytes([0b10101010, 0b01010101]).hex()
    r = client.post("/items", json={"codes": [code], "ids": [900000], "labels": [[3]]}, headers=AUTH)
    assert r.status_code == 201 and r.json() == {"added": [900000], "items": n0 + 1}
    hit = client.post("/search", json={"codes": [code], "k": 1}).json()["results"][0]["hits"][0]
    assert hit == {"id": 900000, "distance": 0, "labels": [3], "correct": None, "image_url": None}
    assert client.get("/items/900000/image").status_code == 404  # added as a code: no image
    img = png_of(ds.pixels([int(mf.query[0])])[0].numpy(), scale=2)
    r = client.post("/items", files=[("images", ("new.png", img, "image/png"))], data={"ids": "900001", "labels": "7"},
                    headers=AUTH)
    assert r.status_code == 201, r.text
    got = np.asarray(Image.open(io.BytesIO(client.get("/items/900001/image").content)))
    sent = torch.from_numpy(np.array(Image.open(io.BytesIO(img))))[None, None]
    np.testing.assert_array_equal(got, prepare_pixels(sent, image_size=8, channels=1)[0, 0].numpy())  # at model size
    assert client.post("/items", json={"codes": [code], "ids": [900000]}, headers=AUTH).status_code == 409
    on_disk = HammingIndex.load(index_file)
    assert {900000, 900001} <= set(on_disk.ids.tolist()) and on_disk.ntotal == n0 + 2
    # a restart (a new service over the same files) sees both items, their labels and the image
    again = TestClient(create_app(SearchService.from_run(tiny_run, ServeConfig(index_file=index_file))))
    hits = again.post("/search", json={"ids": [900001], "k": 50}).json()["results"][0]["hits"]
    mine = [h for h in hits if h["id"] == 900001]  # equal codes tie in insertion order: it comes last among them
    assert mine == [{"id": 900001, "distance": 0, "labels": [7], "correct": True, "image_url": "/items/900001/image"}]
    assert again.post("/items", json={"codes": [code], "ids": [1]}).status_code == 403  # started without token
    assert client.delete("/items/900000", headers=AUTH).json() == {"deleted": 900000, "items": n0 + 1}
    assert client.delete("/items/900001", headers=AUTH).json() == {"deleted": 900001, "items": n0}
    assert client.delete("/items/900000", headers=AUTH).status_code == 404
    assert client.get("/items/900001/image").status_code == 404
    assert HammingIndex.load(index_file).ntotal == n0
    assert not list(index_file.parent.glob(".*.tmp"))  # no temporary file left behind


def test_reads_are_not_blocked_while_a_write_is_applied(served):
    service, client, index_file = served
    codes = [bytes(c).hex() for c in HammingIndex.load(index_file).codes[:2]]
    with service._write_lock:  # a write in progress holds this lock for its whole duration
        t0 = time.perf_counter()
        r = client.post("/search", json={"codes": codes, "k": 3})
        assert r.status_code == 200 and time.perf_counter() - t0 < 5.0
    errors: list[str] = []

    def reader() -> None:
        for _ in range(30):
            snap = service.snapshot
            hits = service.search(snap, np.frombuffer(bytes.fromhex(codes[0]), np.uint8)[None], 5, None)[0]
            if not np.all(np.diff(hits["distances"]) >= 0) or len(hits["ids"]) != 5:
                errors.append("inconsistent answer")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(5):
        service.add(np.array([[i, 255]], np.uint8), np.array([800000 + i]), [None])
        service.remove(800000 + i)
    for t in threads:
        t.join()
    assert errors == []


def _sixteen_bit_png(pixels8: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels8.astype(np.uint16) * 257).save(out, format="PNG")  # 0..255 -> 0..65535
    return out.getvalue()


def test_sixteen_bit_png_is_scaled_not_saturated(served, data):
    _, client, _ = served
    ds, mf = data
    pixels = ds.pixels([int(mf.query[1])])[0].numpy().repeat(3, axis=1).repeat(3, axis=2)
    wide = _sixteen_bit_png(pixels[0])
    assert Image.open(io.BytesIO(wide)).mode.startswith("I")
    from coophash.serve.images import decode_upload

    decoded = decode_upload(wide, "wide.png", 10**6, 10**6).numpy()
    np.testing.assert_array_equal(decoded, pixels)  # exact, and not clipped at 255
    a = client.post("/search", files=[("images", ("a.png", wide, "image/png"))], data={"k": "5"}).json()
    b = client.post("/search", files=[("images", ("b.png", png_of(pixels), "image/png"))], data={"k": "5"}).json()
    assert a["results"][0]["code"] == b["results"][0]["code"]
    assert a["results"][0]["hits"] == b["results"][0]["hits"]


def _noise_png(side: int) -> bytes:
    rng = np.random.default_rng(0)
    return png_of(rng.integers(0, 256, (3, side, side), dtype=np.uint8))


def _bad_requests() -> list[tuple[str, str, dict, int, str]]:
    """(name, method + path, request kwargs, expected status, a word of the message)."""
    valid_png = png_of(np.full((1, 8, 8), 128, np.uint8))
    broken_header = valid_png[:40] + bytes(len(valid_png) - 40)
    noisy = _noise_png(16)
    at = noisy.index(b"IDAT") + 8
    corrupt = noisy[:at] + bytes(b ^ 0x5A for b in noisy[at : at + 64]) + noisy[at + 64 :]  # garbled pixel data
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    up = lambda data, name="x.png": {"files": [("images", (name, data, "image/png"))]}  # noqa: E731
    return [
        ("non-image upload", "POST /search", up(b"hello, I am text", "x.txt"), 400, "not a readable"),
        ("corrupt png", "POST /search", up(corrupt), 400, "corrupt"),
        ("png with a broken header", "POST /search", up(broken_header), 400, "not a readable"),
        ("truncated png", "POST /search", up(noisy[: len(noisy) // 2]), 400, "truncated"),
        ("empty upload", "POST /search", up(b""), 400, "empty"),
        ("gif", "POST /search", up(gif.getvalue(), "x.gif"), 415, "GIF"),
        ("over the byte limit", "POST /search", up(_noise_png(220)), 413, "bytes"),
        ("over the pixel limit", "POST /search", up(png_of(np.zeros((1, 1001, 1000), np.uint8))), 413, "pixels"),
        ("wrong code width", "POST /search", {"json": {"codes": ["abcdef"]}}, 400, "bytes"),
        ("wrong base64 width", "POST /search", {"json": {"codes": ["AAAAAA=="], "encoding": "base64"}}, 400, "bytes"),
        ("bad hex", "POST /search", {"json": {"codes": ["zz00"]}}, 400, "hex"),
        ("bad encoding", "POST /search", {"json": {"codes": ["0000"], "encoding": "rot13"}}, 422, "encoding"),
        ("k = 0", "POST /search", {"json": {"codes": ["0000"], "k": 0}}, 400, "k must"),
        ("k < 0", "POST /search", {"json": {"codes": ["0000"], "k": -4}}, 400, "k must"),
        ("k over the limit", "POST /search", {"json": {"codes": ["0000"], "k": 51}}, 400, "k must"),
        ("k not a number (form)", "POST /search", {**up(valid_png), "data": {"k": "ten"}}, 400, "k"),
        ("radius over bits", "POST /search", {"json": {"codes": ["0000"], "radius": 17}}, 400, "radius"),
        ("unknown id", "POST /search", {"json": {"ids": [123456789]}}, 404, "123456789"),
        ("codes and ids", "POST /search", {"json": {"codes": ["0000"], "ids": [1]}}, 400, "exactly one"),
        ("neither codes nor ids", "POST /search", {"json": {"k": 3}}, 400, "exactly one"),
        ("unknown field", "POST /search", {"json": {"codez": ["0000"]}}, 422, "codez"),
        ("malformed json", "POST /search", {"content": b'{"codes": [', "headers": {"content-type": "application/json"}},
         400, "malformed JSON"),
        ("json array", "POST /search", {"json": ["0000"]}, 422, "object"),
        ("empty body", "POST /search", {"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty"),
        ("text body", "POST /search", {"content": b"k=3", "headers": {"content-type": "text/plain"}}, 415, "content type"),
        ("multipart without files", "POST /search", {"files": [("k", (None, "3"))]}, 400, "images"),
        ("body over the request limit", "POST /search", {"content": b"x" * 700_000,
                                                          "headers": {"content-type": "application/json"}}, 413, "limit"),
        ("streamed body over the limit", "POST /search", {"content": (b"x" * 100_000 for _ in range(8)),
                                                          "headers": {"content-type": "application/json"}}, 413, "limit"),
        ("image of unknown id", "GET /items/424242/image", {}, 404, "424242"),
        ("delete unknown id", "DELETE /items/424242", {"headers": AUTH}, 404, "424242"),
        ("negative id", "GET /items/-1/image", {}, 422, "item_id"),
        ("id not a number", "GET /items/abc/image", {}, 422, "item_id"),
        ("huge id", "GET /items/99999999999999999999999/image", {}, 422, "item_id"),
        ("path traversal (encoded)", "GET /items/..%2F..%2F..%2Fetc%2Fpasswd/image", {}, 404, ""),
        ("path traversal (dots)", "GET /items/%2e%2e/image", {}, 422, "item_id"),
        ("path traversal (file)", "GET /..%2F..%2Fetc%2Fpasswd", {}, 404, "Not Found"),
        ("add: ids missing", "POST /items", {**up(valid_png), "headers": AUTH}, 400, "ids"),
        ("add: negative id", "POST /items", {"json": {"codes": ["0000"], "ids": [-5]}, "headers": AUTH}, 422, "ids"),
        ("add: label out of range", "POST /items",
         {"json": {"codes": ["0000"], "ids": [5], "labels": [[10]]}, "headers": AUTH}, 400, "labels"),
        ("add: two ids for one code", "POST /items", {"json": {"codes": ["0000"], "ids": [5, 6]}, "headers": AUTH},
         400, "ids"),
    ]


@pytest.mark.parametrize("case", _bad_requests(), ids=lambda c: c[0])
def test_bad_input_gets_a_4xx_json_error_and_the_service_keeps_serving(served, case):
    _, client, index_file = served
    _name, target, kwargs, status, word = case
    method, path = target.split(" ")
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str) and body["error"] and word in body["error"]
    assert "Traceback" not in r.text and "root:" not in r.text
    ok = client.post("/search", json={"codes": [bytes(HammingIndex.load(index_file).codes[0]).hex()], "k": 2})
    assert ok.status_code == 200 and len(ok.json()["results"][0]["hits"]) == 2


# ------------------------------------------------------------------------------------------ real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_command() -> list[str]:
    """``coophash serve`` once the command is registered in the group; until then the command's module."""
    try:
        from coophash.cli import COMMANDS

        if "serve" in COMMANDS:
            return [sys.executable, "-m", "coophash", "serve"]
    except ImportError:
        pass
    return [sys.executable, "-c", "from coophash.cli.serve import serve; serve(prog_name='coophash serve')"]


class Server:
    """``coophash serve`` as a subprocess on 127.0.0.1 with a free port; its output goes to ``log``."""

    def __init__(self, run: Path, index_file: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COOPHASH_SERVE_TOKEN": TOKEN}
        cmd = _serve_command() + [str(run), "--index", str(index_file), "--port", str(self.port),
                                  "--log-level", "warning"]
        self.log = log
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture
def server_factory(tiny_run):
    started: list[Server] = []

    def start(index_file: Path, log: Path) -> Server:
        srv = Server(tiny_run, index_file, log)
        started.append(srv)
        srv.wait_ready()
        return srv

    yield start
    for srv in started:
        if srv.proc.poll() is None:
            srv.stop()


def test_real_server_serves_adds_with_token_and_keeps_the_item_after_restart(server_factory, data, tmp_path):
    ds, mf = data
    index_file = tmp_path / "live.chidx"
    log = tmp_path / "server.log"
    srv = server_factory(index_file, log)
    img = png_of(ds.pixels([int(mf.query[2])])[0].numpy(), scale=4)
    r = httpx.post(srv.url + "/search", files=[("images", ("q.png", img, "image/png"))], data={"k": "5"}, timeout=30)
    assert r.status_code == 200 and len(r.json()["results"][0]["hits"]) == 5
    assert isinstance(r.json()["results"][0]["ood_score"], float)
    code = r.json()["results"][0]["code"]
    body = {"codes": [code], "ids": [424242], "labels": [[int(ds.labels[int(mf.query[2])].argmax())]]}
    assert httpx.post(srv.url + "/items", json=body, timeout=30).status_code == 401
    r = httpx.post(srv.url + "/items", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 201, r.text
    bad = httpx.post(srv.url + "/search", content=b"\x89PNG garbage", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and httpx.get(srv.url + "/healthz").status_code == 200
    srv.stop()
    assert "http://127.0.0.1:%d/" % srv.port in log.read_text()  # the command printed its URL
    again = server_factory(index_file, log)
    assert httpx.get(again.url + "/healthz").json()["items"] == len(mf.database) + 1
    hits = httpx.post(again.url + "/search", json={"codes": [code], "k": 50}, timeout=30).json()["results"][0]["hits"]
    found = [h for h in hits if h["id"] == 424242]
    assert found and found[0]["distance"] == 0 and found[0]["labels"] == body["labels"][0]
    stats = httpx.get(again.url + "/stats").json()
    assert stats["items"] == len(mf.database) + 1 and stats["requests"] >= 2


# ------------------------------------------------------------------------------------------ browser
def _browser_paths() -> tuple[str | None, str | None]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    return chromium, shutil.which("chromedriver")


def _artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("COOPHASH_TEST_ARTIFACTS")
    out = Path(folder) if folder else tmp_path_factory.getbasetemp() / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _chrome(chromium: str, chromedriver: str, profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,900"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)


@pytest.fixture
def page_server(tiny_run, tmp_path):
    """The app of a fresh service under uvicorn in a thread of this process (the subprocess path is tested above)."""
    import uvicorn

    service = SearchService.from_run(tiny_run, ServeConfig(index_file=tmp_path / "browser.chidx"))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(not all(_browser_paths()), reason="the headless browser test needs the Debian packages chromium "
                    "and chromium-driver (apt-get install -y chromium chromium-driver; .ci/run installs them)")
def test_browser_upload_shows_k_thumbnails_with_distances(page_server, data, tmp_path, tmp_path_factory, monkeypatch):
    chromium, chromedriver = _browser_paths()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must not try to download a browser or driver
    ds, mf = data
    item = int(mf.query[4])
    query = tmp_path / "query-digit.png"
    query.write_bytes(png_of(ds.pixels([item])[0].numpy(), scale=8))
    k = 8
    driver = _chrome(chromium, chromedriver, tmp_path / "chrome-profile")
    try:
        driver.get(page_server + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "bits" in d.find_element(By.ID, "info").text)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#database figure")) > 0)
        driver.find_element(By.ID, "k").clear()
        driver.find_element(By.ID, "k").send_keys(str(k))
        label = int(ds.labels[item].argmax())
        driver.find_element(By.CSS_SELECTOR, f"#qlabel option[value='{label}']").click()
        driver.find_element(By.ID, "file").send_keys(str(query))
        loaded = "return Array.from(document.querySelectorAll('#results figure.hit img.thumb'))" \
                 ".filter(i => i.complete && i.naturalWidth > 0).length"
        wait.until(lambda d: d.execute_script(loaded) == k)
        hits = driver.find_elements(By.CSS_SELECTOR, "#results figure.hit")
        assert len(hits) == k
        distances = [int(h.find_element(By.CLASS_NAME, "distance").text.removeprefix("d=")) for h in hits]
        assert distances == sorted(distances) and all(0 <= d <= BITS for d in distances)
        marks = [h.find_element(By.CLASS_NAME, "mark").text.strip() for h in hits]
        assert set(marks) <= {"\u2713", "\u2717"} and len(marks) == k
        assert "OOD score:" in driver.find_element(By.ID, "ood").text
        assert f"{k} results" in driver.find_element(By.ID, "status").text
        api = httpx.post(page_server + "/search", files=[("images", ("q.png", query.read_bytes(), "image/png"))],
                         data={"k": str(k)}).json()["results"][0]["hits"]
        assert [int(h.get_attribute("data-id")) for h in hits] == [h["id"] for h in api]
        shot = _artifacts(tmp_path_factory) / "serve-page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
