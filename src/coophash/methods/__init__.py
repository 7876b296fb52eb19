"""Hashing methods: each builds its networks and wires them and the losses into phases for the shared trainer.

Every method module registers itself with ``@register_method(name)``; this package imports each one once
(one line per method) so that the registry is complete.
"""
from coophash.methods.base import METHODS, DataInfo, Method, create_method, list_methods, register_method
from coophash.methods import supervised as _supervised  # noqa: F401,E402  (registers "supervised")
from coophash.methods import coophash as _coophash  # noqa: F401,E402  (registers "coophash")
from coophash.methods import gan as _gan  # noqa: F401,E402  (registers "gan")
from coophash.methods import fakereg as _fakereg  # noqa: F401,E402  (registers "fakereg")
from coophash.methods import classifier as _classifier  # noqa: F401,E402  (registers "classifier")
from coophash.methods import semi as _semi  # noqa: F401,E402  (registers "semi")

__all__ = ["METHODS", "DataInfo", "Method", "create_method", "list_methods", "register_method"]
