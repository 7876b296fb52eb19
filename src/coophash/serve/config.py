"""Settings of the search service (limits, token, index file) and its one error type.

Every limit is a field with a default, so that the CLI can expose it and tests can shrink it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["ServeConfig", "ServeError", "TOKEN_ENV"]

#: Environment variable read by ``coophash serve`` when ``--token`` is not given.
TOKEN_ENV = "COOPHASH_SERVE_TOKEN"


class ServeError(Exception):
    """A request (or the start of the service) cannot be served: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = str(message)


@dataclass(frozen=True)
class ServeConfig:
    """What ``coophash serve`` needs besides the run: the index file, the write token and the input limits.

    ``index_file`` None means ``<run folder>/serve-index.chidx``: loaded when it exists, else built from the
    run's database split and written there.  ``token`` None disables writes (``POST``/``DELETE /items``).
    """

    index_file: Optional[Path] = None
    token: Optional[str] = None
    backend: str = "auto"
    index_threads: int = 1  # threads of one top-k scan (concurrent requests bring their own)
    max_upload_bytes: int = 8 * 1024 * 1024  # one uploaded image
    max_request_bytes: int = 64 * 1024 * 1024  # one request body
    max_pixels: int = 25_000_000  # width * height of one uploaded image
    max_k: int = 1000
    max_queries: int = 64  # images or codes in one search request
    max_range_hits: int = 10_000  # hits returned per query by a radius search (the rest is cut, flagged)
    max_add: int = 1024  # items in one POST /items
    max_list: int = 500  # items in one GET /items page
    latency_window: int = 10_000  # requests kept for the latency percentiles

    def __post_init__(self) -> None:
        for name in ("index_threads", "max_upload_bytes", "max_request_bytes", "max_pixels", "max_k", "max_queries",
                     "max_range_hits", "max_add", "max_list", "latency_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServeConfig.{name} must be a positive integer, got {value!r}")
        if self.token is not None and not self.token.strip():
            raise ValueError("ServeConfig.token must not be empty (leave it None to disable writes)")
        if self.index_file is not None:
            object.__setattr__(self, "index_file", Path(self.index_file))
