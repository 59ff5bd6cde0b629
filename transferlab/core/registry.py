"""Find a strategy by name: one small registry for paradigms, weight sources, datasets, augmentation presets,
optimizers, schedules, losses and deploy modules.

    OPTIMIZERS = Registry("optimizer")

    @OPTIMIZERS.register("sgd")
    def _sgd(groups, p): ...

    OPTIMIZERS.create("sgd", groups, p)  # = OPTIMIZERS.get("sgd")(groups, p)

Adding a strategy is one decorated definition. A registry reads like a dict that cannot be written to (`in`,
iteration in registration order, `len`, `[name]`, `.items()`), and `get(name)` of an unknown name raises the
one-line `TransferlabError` with the closest name: "unknown optimizer 'sdg' (did you mean 'sgd'?); available:
adam, sgd". Registering a name twice is a bug in transferlab and fails at import.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from .errors import TransferlabError

T = TypeVar("T")
_MISSING: Any = object()


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """The hint " (did you mean 'x'?)" with the closest of `choices` to `name` (difflib's), or "" if none is."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name_message(kind: str, name: object, names: Iterable[str]) -> str | None:
    """The one line for a `name` that is not among `names` ("unknown paradigm 'linaer' (did you mean 'linear'?);
    available: ..."), else None."""
    names = list(names)
    if name in names:
        return None
    return f"unknown {kind} '{name}'{did_you_mean(name, names)}; available: {', '.join(sorted(names))}"


class Registry(Mapping[str, T]):
    """Named entries of one kind ("paradigm", "optimizer", ...), in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: Any = None, obj: Any = _MISSING) -> Any:
        """`@registry.register` (under the entry's `__name__`), `@registry.register("name")`, or
        `registry.register("name", obj)`; each returns the entry unchanged."""
        if obj is not _MISSING:
            return self._add(name, obj)
        if name is None or isinstance(name, str):
            return lambda entry: self._add(entry.__name__ if name is None else name, entry)
        return self._add(name.__name__, name)  # bare decorator: `name` is the entry itself

    def _add(self, name: str, obj: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice ({_origin(self._entries[name])} and "
                             f"{_origin(obj)}); give one of them another name")
        self._entries[name] = obj
        return obj

    def get(self, name: str, default: Any = _MISSING) -> T:  # type: ignore[override]
        """The entry registered as `name`; for an unknown name `default` if given, else a one-line
        TransferlabError naming the closest entry and all of them."""
        if name in self._entries:
            return self._entries[name]
        if default is not _MISSING:
            return default
        raise TransferlabError(unknown_name_message(self.kind, name, self._entries))

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """`get(name)(*args, **kwargs)`: build what the entry called `name` makes."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]  # KeyError, as a Mapping's should; `get` gives the user's line

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def _origin(obj: object) -> str:
    """Where an entry was defined (module.qualname), to find the two registrations of one name."""
    qualname = getattr(obj, "__qualname__", None)
    return f"{getattr(obj, '__module__', '?')}.{qualname}" if qualname else repr(obj)
