"""Named registries: the one place each set of choices (advantage estimators, losses, KL
estimators, reward rules, evaluation metrics, guard rules, pipeline stages) is defined.

Adding a variant is one decorated function:

    @ADVANTAGES.register("my_estimator")
    def my_estimator(x: AdvantageInputs) -> tuple[Tensor, Tensor]: ...

The config tree names the registry behind each choice field (rlhf/config/checks.py), so a bad
value is refused when the config loads, with the registered names listed, and
`rlhf config show --docs` lists them beside the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(ValueError):
    """A name that no entry of the registry has; the message lists the valid names."""


class Registry(Mapping[str, T], Generic[T]):
    """An ordered name -> entry table that entries join with `@registry.register(name)`."""

    def __init__(self, what: str):
        self.what = what  # e.g. "advantage estimator", used in error messages
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under `name` (names are unique)."""

        def wrap(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} '{name}' is already registered")
            self._entries[name] = entry
            return entry

        return wrap

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.what} '{name}'; valid: {', '.join(self._entries)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries  # Mapping's own version would raise UnknownName

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)
