"""One small registry type for every extension point (formats, datasets, families, ...).

Names are normalized (case, dashes vs underscores) so ``auto-round`` and ``auto_round`` are the
same entry; an unknown name is a :class:`UnknownName` error that lists the choices and the closest
match, which is most of what a user needs to fix a typo.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from auto_round_mllm.errors import UnknownName

T = TypeVar("T")


def normalize_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class Registry(Generic[T]):
    """A name -> object mapping with aliases, duplicate protection and helpful lookups."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, item: T, *, aliases: tuple[str, ...] = (), replace: bool = False) -> T:
        key = normalize_name(name)
        if key in self._items and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[key] = item
        for alias in aliases:
            self._aliases[normalize_name(alias)] = key
        return item

    def register(
        self, name: str, *, aliases: tuple[str, ...] = (), replace: bool = False
    ) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def decorator(item: T) -> T:
            return self.add(name, item, aliases=aliases, replace=replace)

        return decorator

    def canonical(self, name: str) -> str:
        key = normalize_name(name)
        key = self._aliases.get(key, key)
        if key not in self._items:
            choices = self.names()
            close = difflib.get_close_matches(key, choices, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnknownName(
                f"unknown {self.kind} {name!r}",
                fix=f"{hint}choose one of: {', '.join(choices)}",
            )
        return key

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        key = normalize_name(name)
        return self._aliases.get(key, key) in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._items.items()))
