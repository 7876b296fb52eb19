"""Request bodies of ``POST /search`` and ``POST /items``: JSON (codes or ids) or multipart (image files).

Both endpoints take either content type, so the body is read here rather than by FastAPI's parameter
binding; the JSON schemas below still document it in the OpenAPI page.  Every problem becomes a
:class:`ServeError` with a 4xx status and a message naming the field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from .config import ServeConfig, ServeError
from .parsing import parse_int_list

__all__ = ["SearchBody", "AddBody", "Upload", "ImageForm", "read_json", "read_form", "validation_message",
           "check_k_radius", "ItemId"]

INT64_MAX = 2**63 - 1
ItemId = Annotated[int, Field(ge=0, le=INT64_MAX)]


class SearchBody(BaseModel):
    """JSON search: packed codes (hex or base64) or ids of indexed items, top-k or within a radius."""

    model_config = ConfigDict(extra="forbid")
    codes: Optional[list[str]] = Field(None, description="Packed LSB-first codes, ceil(bits/8) bytes each.")
    ids: Optional[list[ItemId]] = Field(None, description="Search with the stored codes of these items.")
    encoding: Literal["hex", "base64"] = "hex"
    k: int = Field(10, description="Neighbours per query (1..max_k).")
    radius: Optional[int] = Field(None, description="Every item within this Hamming distance instead of top-k.")
    labels: Optional[list[list[int]]] = Field(None, description="Class indices of each query (for correct marks).")


class AddBody(BaseModel):
    """JSON add: packed codes with one id each and optional class indices."""

    model_config = ConfigDict(extra="forbid")
    codes: list[str]
    ids: list[ItemId]
    encoding: Literal["hex", "base64"] = "hex"
    labels: Optional[list[list[int]]] = None


#: OpenAPI description of the multipart forms (files plus text fields).
SEARCH_FORM_SCHEMA = {
    "type": "object",
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "k": {"type": "integer", "default": 10},
        "radius": {"type": "integer"},
        "labels": {"type": "string", "description": "Class indices of the query, comma-separated."},
    },
    "required": ["images"],
}
ADD_FORM_SCHEMA = {
    "type": "object",
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "ids": {"type": "string", "description": "One id per image, comma-separated or repeated."},
        "labels": {"type": "string", "description": "Class indices, one field per image or one for all."},
    },
    "required": ["images", "ids"],
}


def openapi_body(model: type[BaseModel], form_schema: dict) -> dict[str, Any]:
    """``openapi_extra`` of an endpoint that takes ``model`` as JSON or ``form_schema`` as multipart."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        "multipart/form-data": {"schema": form_schema},
    }}}


def validation_message(exc: ValidationError | Any) -> str:
    """Pydantic errors as one readable line: ``field: problem; field: problem``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts[:5]) or "invalid request"


async def read_json(request: Request, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON body (400 when malformed, 422 when it does not fit ``model``)."""
    raw = await request.body()
    if not raw.strip():
        raise ServeError(400, "empty request body; send JSON or multipart/form-data")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ServeError(400, f"malformed JSON body: {exc}") from None
    if not isinstance(doc, dict):
        raise ServeError(422, f"the JSON body must be an object, got {type(doc).__name__}")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise ServeError(422, validation_message(exc)) from None


@dataclass
class Upload:
    """One uploaded file: its name and bytes."""

    name: str
    data: bytes


@dataclass
class ImageForm:
    """A multipart body: the image files and the text fields."""

    uploads: list[Upload]
    fields: dict[str, list[str]] = field(default_factory=dict)

    def text(self, name: str) -> Optional[str]:
        """The last value of a text field (None when absent or blank)."""
        values = [v for v in self.fields.get(name, []) if v.strip()]
        return values[-1].strip() if values else None

    def int_field(self, name: str) -> Optional[int]:
        """An integer text field (None when absent); 400 when not an integer."""
        text = self.text(name)
        if text is None:
            return None
        try:
            return int(text)
        except ValueError:
            raise ServeError(400, f"{name}: {text[:40]!r} is not an integer") from None

    def int_lists(self, name: str) -> list[list[int]]:
        """Each value of a repeated field as a list of integers (``"1,4"`` → ``[1, 4]``)."""
        return [parse_int_list(v, name) for v in self.fields.get(name, [])]


async def read_form(request: Request, settings: ServeConfig, max_files: int) -> ImageForm:
    """Parse a multipart body: files under ``images`` (or ``image``), text fields as strings."""
    try:
        form = await request.form(max_files=max_files, max_fields=max_files + 16)
    except ServeError:
        raise
    except Exception as exc:  # the multipart parser reports malformed bodies with several types
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        raise ServeError(400, f"malformed multipart body: {detail}") from None
    uploads: list[Upload] = []
    fields: dict[str, list[str]] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in ("images", "image"):
                    raise ServeError(400, f"unexpected file field {key!r}; send files as 'images'")
                data = await value.read(settings.max_upload_bytes + 1)
                uploads.append(Upload(value.filename or f"upload {len(uploads)}", data))
            elif key in ("images", "image"):
                raise ServeError(400, f"{key}: expected a file upload, got a text field")
            else:
                fields.setdefault(key, []).append(value)
    finally:
        await form.close()
    return ImageForm(uploads, fields)


def check_k_radius(k: Optional[int], radius: Optional[int], settings: ServeConfig, bits: int) -> tuple[int, Optional[int]]:
    """Validate ``k`` (1..max_k, default 10) and ``radius`` (0..bits or None); 400 with the allowed range."""
    k = 10 if k is None else k
    if isinstance(k, bool) or not 1 <= k <= settings.max_k:
        raise ServeError(400, f"k must be between 1 and {settings.max_k}, got {k}")
    if radius is not None and not 0 <= radius <= bits:
        raise ServeError(400, f"radius must be between 0 and {bits} (the code length), got {radius}")
    return k, radius
