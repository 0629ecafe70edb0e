"""One small registry type for every "name → thing" table of the package.

Ops, loss terms, baselines, objectives, backends, devices, video sources and sinks are each a
:class:`Registry`: entries are added once (a second registration of a name is a bug and raises
``ValueError``), looked up by name, and an unknown name raises the registry's user-facing error
class with one message style everywhere::

    unknown video source scheme 'rtpx'; known: file, rtp, rtsp, udp (see `hbl-edge stream --help`)

Torch-free and dependency-free on purpose: the deploy side (runtime/, engine builds) uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterator, TypeVar

from .errors import ConfigError, HblError

T = TypeVar("T")


class Registry(Mapping[str, T]):
    """``name → entry`` with one-time registration and one-line lookup errors.

    A read-only :class:`~collections.abc.Mapping` (``in``, iteration in registration order,
    ``len``, ``dict(reg)``, ``reg == {...}``), except that looking up an unknown name raises
    ``error`` with the message below rather than ``KeyError``.

    Args:
        what: how an entry is called in messages ("op", "loss term", "video source scheme").
        error: the :class:`~hbl_edge.errors.HblError` subclass an unknown name raises.
        hint: optional text appended to the unknown-name message (where to look, what to pass).
    """

    def __init__(self, what: str, error: type[HblError] = ConfigError, hint: str | None = None) -> None:
        self.what = what
        self.error = error
        self.hint = hint
        self._entries: dict[str, T] = {}

    # -- registration -------------------------------------------------------------------
    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form: ``@REG.register("name")`` above a function or class."""

        def deco(entry: T) -> T:
            return self.add(name, entry)

        return deco

    # -- lookup --------------------------------------------------------------------------
    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = ", ".join(self._entries) or "none"
        text = f"unknown {self.what} {name!r}; known: {known}"
        return f"{text} ({self.hint})" if self.hint else text

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"


__all__ = ["Registry"]
