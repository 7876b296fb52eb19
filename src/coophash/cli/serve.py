"""``coophash serve``: a trained run and its Hamming index behind HTTP, with a web page (docs/serve.md)."""
from __future__ import annotations

import sys
from typing import Optional

import click

from coophash.cli.common import fail

__all__ = ["serve"]


@click.command("serve")
@click.argument("run")
@click.option("--index", "index_file", type=click.Path(dir_okay=False),
              help="Index file to serve and update (built from the run's database split when missing; "
                   "default: serve-index.chidx in the run folder).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", envvar="COOPHASH_SERVE_TOKEN", show_envvar=True,
              help="Bearer token that POST/DELETE /items require (without one the index is read-only).")
@click.option("--root", default="runs", show_default=True, help="Folder of run folders (for a run number or name).")
@click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--backend", type=click.Choice(["auto", "numba", "numpy", "faiss"]), default="auto", show_default=True)
@click.option("--max-k", type=click.IntRange(1), default=1000, show_default=True, help="Largest k of a search.")
@click.option("--max-upload-bytes", type=click.IntRange(1), default=8 * 1024 * 1024, show_default=True)
@click.option("--max-pixels", type=click.IntRange(1), default=25_000_000, show_default=True,
              help="Largest width x height of an uploaded image.")
@click.option("--torch-threads", type=click.IntRange(1), default=None, help="Threads of one network forward pass.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
def serve(run: str, index_file: Optional[str], host: str, port: int, token: Optional[str], root: str, which: str,
          device: str, backend: str, max_k: int, max_upload_bytes: int, max_pixels: int,
          torch_threads: Optional[int], log_level: str) -> None:
    """Serve RUN (a run folder, checkpoint, or run number/name under --root): search API, web page at /."""
    try:
        import uvicorn

        from coophash.serve import SearchService, ServeConfig, ServeError, create_app
    except ImportError as exc:
        fail(f"coophash serve needs the serve extra ({exc}); install it with: pip install 'coophash[serve]'")
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    try:
        settings = ServeConfig(index_file=index_file, token=token or None, backend=backend, max_k=max_k,
                               max_upload_bytes=max_upload_bytes, max_pixels=max_pixels)
        service = SearchService.from_run(run, settings, root=root, which=which, device=device)
    except ServeError as exc:
        fail(exc.message)
    except (ValueError, ImportError, OSError) as exc:
        fail(str(exc))
    shown = f"[{host}]" if ":" in host else host
    writes = "writes need the bearer token" if settings.token else "read-only (no --token)"
    click.echo(f"coophash serve: http://{shown}:{port}/  ({service.info()['items']} items, {service.bits} bits, "
               f"index {service.store.path}; {writes}; API docs at /docs)")
    sys.stdout.flush()
    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level)
