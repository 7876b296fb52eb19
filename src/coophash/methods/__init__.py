"""Hashing methods: each builds its networks and phase list for the shared trainer."""
from coophash.methods.base import METHODS, DataInfo, Method, create_method, list_methods, register_method
from coophash.methods import supervised as _supervised  # noqa: F401  (registers "supervised")

__all__ = ["METHODS", "DataInfo", "Method", "create_method", "list_methods", "register_method"]
from coophash.methods import coophash as _coophash  # noqa: F401,E402  (registers "coophash")
from coophash.methods import fakereg as _fakereg  # noqa: F401  (registers "gan" and "fakereg")
