"""The one exception type of the data layer."""
from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad or missing input data; the message names the file (and line or field) and what was expected."""
