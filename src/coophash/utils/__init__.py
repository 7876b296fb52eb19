"""Small shared helpers (atomic file writes)."""
from coophash.utils.io import atomic_write_bytes, atomic_write_text

__all__ = ["atomic_write_bytes", "atomic_write_text"]
