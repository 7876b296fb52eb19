"""Load benchmark of ``coophash serve``: requests per second and p50/p99 latency from concurrent clients.

A real server (a subprocess on 127.0.0.1, one uvicorn worker) serves an index of --n random 64-bit codes
(default 1,000,000) with a 64-bit network (a tiny supervised run on digits trained here unless --run is
given).  Clients are asyncio tasks, each with its own keep-alive HTTP/1.1 connection (a minimal client, so that the
load generator takes little of the cores it shares with the server), 1, 8 and 32 at once, sending a bounded
number of requests in all:

* code queries: ``POST /search`` with one hex code (JSON), top-10;
* image queries: ``POST /search`` with one PNG upload (multipart), top-10: decode, encode, search.

Where the time goes: the server reports its stages in the Server-Timing header (decode, encode, search,
serialise); "http" is the client's latency minus those stages (parsing, routing, thread hand-off, the
network stack and the client itself, which shares the machine's cores with the server).  uvicorn uses
httptools and uvloop when they are installed (``pip install 'uvicorn[standard]'``); the result file says which.

    python benchmarks/bench_serve.py                            # 1M codes, the README figures
    python benchmarks/bench_serve.py --n 20000 --requests 200   # quick smoke run
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import importlib.util
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

BITS = 64


def _train_run(folder: Path) -> Path:
    """A 64-bit supervised run on digits (one epoch: the network's speed, not its accuracy, matters here)."""
    from coophash.api import Hasher
    from coophash.data import load_dataset, make_protocol

    ds = load_dataset("digits")
    mf = make_protocol(ds, seed=0, query_per_class=10, val_per_class=10)
    run = folder / "00000-supervised-digits-64b"
    Hasher(loss="dpsh", bits=BITS, epochs=1, seed=0, run_dir=run).fit(ds, mf)
    return run


def _index_file(folder: Path, n: int, seed: int) -> Path:
    from coophash.index import HammingIndex

    rng = np.random.default_rng(seed)
    index = HammingIndex(BITS)
    index.add(rng.integers(0, 256, size=(n, BITS // 8), dtype=np.uint8))
    path = folder / f"random-{n}.chidx"
    index.save(path)
    return path


def _query_pngs(count: int) -> list[bytes]:
    from PIL import Image

    from coophash.data import load_dataset

    pixels = load_dataset("digits").pixels(np.arange(count)).numpy()
    out = []
    for p in pixels:
        buf = io.BytesIO()
        Image.fromarray(p[0]).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _start_server(run: Path, index: Path, torch_threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "coophash", "serve"]
    try:
        from coophash.cli import COMMANDS

        if "serve" not in COMMANDS:
            cmd = [sys.executable, "-c", "from coophash.cli.serve import serve; serve()"]
    except ImportError:
        pass
    cmd += [str(run), "--index", str(index), "--port", str(port), "--log-level", "warning",
            "--torch-threads", str(torch_threads)]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.25)
    raise SystemExit(f"server did not start:\n{log.read_text()}")


def _server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


class _Connection:
    """A minimal keep-alive HTTP/1.1 client (asyncio streams): it costs the shared cores far less than httpx."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, ctype: str) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _load(url: str, requests: list[tuple[bytes, str]], clients: int, total: int) -> dict:
    """``total`` requests from ``clients`` concurrent keep-alive connections; latency and stage statistics."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    counter = iter(range(total))
    conns = [_Connection(host, int(port)) for _ in range(clients)]

    async def client(conn: _Connection) -> None:
        for i in counter:
            body, ctype = requests[i % len(requests)]
            t0 = time.perf_counter()
            status, headers, data = await conn.post("/search", body, ctype)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise SystemExit(f"request failed: {status} {data[:200]!r}")
            for name, ms in _server_timing(headers.get("server-timing", "")).items():
                stages.setdefault(name, []).append(ms)

    for conn in conns:  # connect and warm up
        await conn.post("/search", *requests[0])
    t0 = time.perf_counter()
    await asyncio.gather(*(client(conn) for conn in conns))
    wall = time.perf_counter() - t0
    for conn in conns:
        conn.close()
    lat = np.array(latencies) * 1e3
    mean_stages = {k: float(np.mean(v)) for k, v in stages.items()}
    return {"clients": clients, "requests": total, "rps": total / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()), "stages_ms": mean_stages,
            "http_ms": float(lat.mean()) - sum(mean_stages.values())}


def _scenarios(pngs: list[bytes], rng: np.random.Generator) -> dict[str, list[tuple[bytes, str]]]:
    """Prepared request bodies: one hex code (JSON) or one PNG (multipart) each, top-10."""
    codes = rng.integers(0, 256, size=(4096, BITS // 8), dtype=np.uint8)
    code_bodies = [(json.dumps({"codes": [bytes(c).hex()], "k": 10}).encode(), "application/json") for c in codes]
    b = "coophash-bench-boundary"
    image_bodies = []
    for png in pngs:
        body = (f'--{b}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n'
                f'--{b}\r\nContent-Disposition: form-data; name="images"; filename="q.png"\r\n'
                f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{b}--\r\n".encode()
        image_bodies.append((body, f"multipart/form-data; boundary={b}"))
    return {"code": code_bodies, "image": image_bodies}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="codes in the index")
    ap.add_argument("--requests", type=int, default=4000, help="code queries per concurrency level")
    ap.add_argument("--image-requests", type=int, default=1000, help="image queries per concurrency level")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--run", type=Path, help="a 64-bit run to serve (default: train a tiny one)")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve/load.json"))
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    run = args.run or _train_run(folder)
    index = _index_file(folder, args.n, seed=0)
    proc, url = _start_server(run, index, args.torch_threads, folder / "server.log")
    rows = []
    try:
        scenarios = _scenarios(_query_pngs(256), np.random.default_rng(1))
        for kind, bodies in scenarios.items():
            total = args.requests if kind == "code" else args.image_requests
            for clients in (int(c) for c in args.clients.split(",")):
                row = {"query": kind, **asyncio.run(_load(url, bodies, clients, total))}
                rows.append(row)
                stages = " ".join(f"{k}={v:.2f}" for k, v in row["stages_ms"].items())
                print(f"{kind:5s} clients={clients:2d}  {row['rps']:7.1f} req/s  p50={row['p50_ms']:6.2f} ms  "
                      f"p99={row['p99_ms']:6.2f} ms  [{stages} http={row['http_ms']:.2f}]", flush=True)
        stats = httpx.get(url + "/stats").json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    doc = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "n": args.n, "bits": BITS,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "server_backend": stats["backend"],
           "torch_threads": args.torch_threads, "rows": rows,
           "uvicorn_speedups": {m: importlib.util.find_spec(m) is not None for m in ("httptools", "uvloop")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
