"""A secret value that never shows itself in reprs, logs or errors."""

from __future__ import annotations


class Secret:
    """Holds a provider or client key. ``str``/``repr`` show only where it came from."""

    __slots__ = ("_source", "_value")

    def __init__(self, value: str, *, source: str) -> None:
        self._value = value
        self._source = source

    def reveal(self) -> str:
        """The secret itself: pass it straight to the HTTP header that needs it."""
        return self._value

    @property
    def source(self) -> str:
        """Where the secret came from (``env:NAME`` or ``file:PATH``), safe to log."""
        return self._source

    def __repr__(self) -> str:
        return f"Secret(source={self._source!r}, value='***')"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("secrets cannot be pickled")
