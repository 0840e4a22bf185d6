"""A named registry of callables or classes of one shape: the project's single extension mechanism.

Every extension point (datasets, partitions, backends, optimizers, strategies, rewards, controllers, adapters)
is a :class:`Registry`. Entries are added with the :meth:`Registry.register` decorator and looked up with
:meth:`Registry.get`, which names the registry and the allowed names when a lookup fails. Registries may also
load third-party entries from a Python entry-point group.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name no registry entry has: a user error (the message names the registry and the allowed names)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


class Registry(Generic[T]):
    """A mapping from names to objects of one shape.

    Args:
        kind: What the entries are (used in error messages), e.g. ``"partition scheme"``.
        entry_point_group: Optional entry-point group from which installed packages contribute entries.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """Return a decorator that registers its target under ``name``.

        Args:
            name: The lookup name.
            overwrite: Replace an existing entry instead of raising.

        Raises:
            ValueError: If ``name`` is taken and ``overwrite`` is false.
        """

        def decorator(obj: T) -> T:
            self.add(name, obj, overwrite=overwrite)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> None:
        """Register ``obj`` under ``name`` (the non-decorator form of :meth:`register`)."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and not overwrite:
            raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
        self._entries[name] = obj

    def remove(self, name: str) -> T:
        """Unregister and return the entry called ``name`` (raises like :meth:`get` when unknown)."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:
        """Return the entry called ``name``.

        Raises:
            UnknownNameError: A ``KeyError`` naming the registry kind and the allowed names when ``name`` is unknown.
        """
        if name not in self._entries:
            self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def reload_entry_points(self) -> None:
        """Look for entries in the entry-point group again (after installing a plug-in package at run time)."""
        self._entry_points_loaded = False
        self._load_entry_points()

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._entries:
                self._entries[ep.name] = ep.load()


def import_available(modules: Iterable[str]) -> None:
    """Import each of ``modules`` that is installed (importing a plug-in module registers its entries)."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            importlib.import_module(module)
