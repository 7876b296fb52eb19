"""``coophash serve``: a trained run and a live Hamming index behind HTTP (FastAPI), with a web page.

    >>> from coophash.serve import SearchService, ServeConfig, create_app
    >>> service = SearchService.from_run("runs/00003-supervised-dpsh-mnist5k-64b-lf1-s0", ServeConfig(token="s3cret"))
    >>> app = create_app(service)          # then: uvicorn.run(app, host="127.0.0.1", port=8000)

Needs the ``serve`` extra (``pip install 'coophash[serve]'``: fastapi, uvicorn, python-multipart).
Endpoints, limits and the on-disk layout are described in docs/serve.md.
"""
from .app import create_app
from .config import TOKEN_ENV, ServeConfig, ServeError
from .service import DEFAULT_INDEX_NAME, SearchService

__all__ = ["create_app", "SearchService", "ServeConfig", "ServeError", "TOKEN_ENV", "DEFAULT_INDEX_NAME"]
