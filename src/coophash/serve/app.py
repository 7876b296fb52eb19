"""The FastAPI application of ``coophash serve``: search, items, health, statistics and the web page.

Every error is a JSON object ``{"error": "<one line>"}`` with a 4xx status (5xx only for faults of the
service itself, without a stack trace in the answer); the next request is served normally.
"""
from __future__ import annotations

import json
import logging
import secrets
import time
from pathlib import Path as FilePath
from typing import Any, Optional

from fastapi import FastAPI, Path, Query
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .bodies import (
    ADD_FORM_SCHEMA,
    INT64_MAX,
    SEARCH_FORM_SCHEMA,
    AddBody,
    SearchBody,
    openapi_body,
    validation_message,
)
from .config import ServeError
from .page import PAGE_HTML
from .queries import add_items, search_request
from .service import SearchService
from .stats import RequestStats

__all__ = ["create_app"]

_log = logging.getLogger("coophash.serve")

#: The page loads nothing from elsewhere: scripts, styles and images only from this origin (or inline / blob:).
_PAGE_CSP = ("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
             "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'")


def _error(status: int, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Guard:
    """ASGI middleware: refuse bodies over the byte limit (413) and time every request for ``/stats``."""

    def __init__(self, app: Any, stats: RequestStats, max_body: int) -> None:
        self.app, self.stats, self.max_body = app, stats, max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_timed(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        received = 0

        async def receive_counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise ServeError(413, f"request body over the limit of {self.max_body} bytes")
            return message

        try:
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await _error(413, f"request body over the limit of {self.max_body} bytes")(scope, receive, send_timed)
                return
            await self.app(scope, receive_counted, send_timed)
        finally:
            self.stats.record(status["code"], time.perf_counter() - t0)


def _install_error_handlers(app: FastAPI) -> None:
    async def serve_error(_: Request, exc: ServeError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers)

    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, validation_message(exc))

    async def fault(_: Request, exc: Exception) -> JSONResponse:
        _log.error("internal error while serving a request: %s: %s", type(exc).__name__, exc)
        return _error(500, "internal error; the service keeps running")

    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, fault)


def _require_token(service: SearchService, request: Request) -> None:
    expected = service.settings.token
    if expected is None:
        raise ServeError(403, "writes are disabled: start coophash serve with --token (or its environment variable)")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), expected.encode()):
        raise ServeError(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')")


def _json(payload: dict, status: int = 200, timing: Optional[dict[str, float]] = None) -> Response:
    """Serialise once, timing it; per-stage times go to the Server-Timing header."""
    t0 = time.perf_counter()
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {}
    if timing is not None:
        stages = {**timing, "serialise": (time.perf_counter() - t0) * 1e3}
        headers["Server-Timing"] = ", ".join(f"{k};dur={v:.3f}" for k, v in stages.items())
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _item_routes(app: FastAPI, service: SearchService) -> None:
    @app.get("/items", summary="A page of indexed items (ids, labels, image URLs) in insertion order")
    def list_items(offset: int = Query(0, ge=0), limit: int = Query(24, ge=1)) -> Response:
        """Items ``offset .. offset + limit`` (at most max_list) with their labels and image URLs."""
        limit = min(limit, service.settings.max_list)
        snap, ids = service.list_items(offset, limit)
        items = [{"id": i, "labels": service.labels_of(snap, i),
                  "image_url": f"/items/{i}/image" if service.has_image(snap, i) else None} for i in ids.tolist()]
        return _json({"total": int(snap.index.ntotal), "offset": offset, "items": items})

    @app.get("/items/{item_id}/image", summary="PNG of an indexed item",
             responses={200: {"content": {"image/png": {}}}})
    def item_image(item_id: int = Path(ge=0, le=INT64_MAX)) -> Response:
        """The item's image at the network's input size; 404 for unknown ids and items added as codes."""
        png = service.image_png(item_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

    @app.post("/items", status_code=201, summary="Add items (images or codes, with ids); needs the bearer token",
              openapi_extra=openapi_body(AddBody, ADD_FORM_SCHEMA))
    async def post_items(request: Request) -> Response:
        """Multipart ``images`` + ``ids`` (+ ``labels``), or JSON ``{"codes", "ids", "encoding", "labels"}``.

        The change is persisted atomically before it is visible; 409 when an id is already indexed.
        """
        _require_token(service, request)
        payload = await add_items(service, request)
        return _json(payload, status=201)

    @app.delete("/items/{item_id}", summary="Delete an item; needs the bearer token")
    async def delete_item(request: Request, item_id: int = Path(ge=0, le=INT64_MAX)) -> Response:
        """Remove the item from the index (persisted atomically before it is visible); 404 when absent."""
        _require_token(service, request)
        total = await run_in_threadpool(service.remove, item_id)
        return _json({"deleted": item_id, "items": total})


def create_app(service: SearchService) -> FastAPI:
    """The application serving ``service`` (run it with uvicorn)."""
    app = FastAPI(title="coophash search service", version="1", docs_url=None,
                  description="Hamming-space image retrieval with a trained coophash run. Codes are packed "
                              "LSB-first, ceil(bits/8) bytes, sent as hex or base64.")
    stats = RequestStats(service.settings.latency_window)
    app.state.service = service
    app.state.stats = stats
    _install_error_handlers(app)
    app.add_middleware(_Guard, stats=stats, max_body=service.settings.max_request_bytes)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML, headers={"Content-Security-Policy": _PAGE_CSP})

    @app.get("/healthz", summary="Liveness: ok and the number of indexed items")
    def healthz() -> dict:
        return {"status": "ok", "items": int(service.snapshot.index.ntotal)}

    @app.get("/stats", summary="Items, bits, method, backend, requests served and latency percentiles")
    def get_stats() -> dict:
        return {**service.info(), **stats.summary()}

    @app.post("/search", summary="Top-k (or radius) search by uploaded images or by packed codes / item ids",
              openapi_extra=openapi_body(SearchBody, SEARCH_FORM_SCHEMA))
    async def search(request: Request) -> Response:
        """Multipart ``images`` (PNG/JPEG) with ``k``, ``radius``, ``labels``; or JSON ``codes`` / ``ids``.

        Codes are packed LSB-first, ceil(bits/8) bytes, as hex or base64.  Each result lists the hits (id,
        Hamming distance, labels, correct mark, image URL) and the query's OOD score where the method has one.
        """
        payload, timing = await search_request(service, request)
        return _json(payload, timing=timing)

    _item_routes(app, service)
    _docs_routes(app)
    return app


_DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}


def _docs_routes(app: FastAPI) -> None:
    """OpenAPI docs at ``/docs``, with Swagger UI's script and style served from the installed
    ``swagger-ui-bundle`` package (offline), or from FastAPI's default CDN when that package is missing."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        import swagger_ui_bundle
        assets: Optional[FilePath] = FilePath(swagger_ui_bundle.swagger_ui_path)
    except ImportError:  # pragma: no cover - the serve extra installs it
        assets = None

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if assets is None:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="coophash API")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="coophash API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="data:,")

    @app.get("/docs-assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        if assets is None or name not in _DOCS_ASSETS:  # fixed names only: no path from the request
            raise ServeError(404, f"no documentation asset {name!r}")
        return Response((assets / name).read_bytes(), media_type=_DOCS_ASSETS[name],
                        headers={"Cache-Control": "max-age=86400"})
