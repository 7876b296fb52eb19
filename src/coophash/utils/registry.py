"""One registry style for every kind of named thing: losses, backbones, methods, datasets, suites.

A :class:`Registry` maps a name to an object (a class or a factory).  Entries are added with the
decorator ``@REG.register("name")`` (or ``REG.add("name", obj)`` for objects defined elsewhere), looked
up with ``REG.get(name)``, which raises :class:`KeyError` with a one-line message listing the known names,
and listed with ``REG.names()``.  A registry reads like a read-only mapping (``name in REG``, ``REG[name]``,
iteration, ``len``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry", "UnknownName"]

T = TypeVar("T")


class UnknownName(KeyError):
    """A name that is not registered; ``str()`` is the one-line message (not KeyError's quoted repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """Names → objects of one kind (``kind`` names it in error messages, e.g. ``"loss"``)."""

    def __init__(self, kind: str, case_sensitive: bool = True) -> None:
        self.kind = kind
        self.case_sensitive = case_sensitive
        self._items: dict[str, T] = {}

    def _key(self, name: str) -> str:
        return str(name) if self.case_sensitive else str(name).lower()

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; a name registered twice is an error."""
        key = self._key(name)
        if key in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered (by {self._items[key]!r})")
        self._items[key] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj)

        return deco

    def get(self, name: str) -> T:  # type: ignore[override]
        """The object registered as ``name``; :class:`UnknownName` lists the known names."""
        key = self._key(name)
        if key not in self._items:
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._items[key]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    # -- read-only mapping -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
