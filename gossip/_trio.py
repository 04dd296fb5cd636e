"""Small trio helpers shared by the runtime and the transports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Opening", "single_exception"]


class _Closable(Protocol):
    async def aclose(self) -> None: ...


T = TypeVar("T", bound=_Closable)


class Opening(Generic[T]):
    """What every ``open_*_transport`` returns: ``async with open_x(...) as t`` opens and
    closes it; ``t = await open_x(...)`` opens it and leaves the closing to the caller
    (``async with await open_x(...) as t`` keeps working too)."""

    __slots__ = ("_make", "_opened")

    def __init__(self, make: Callable[[], Awaitable[T]]) -> None:
        self._make = make
        self._opened: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._open().__await__()

    async def _open(self) -> T:
        return await self._make()

    async def __aenter__(self) -> T:
        self._opened = await self._make()
        return self._opened

    async def __aexit__(self, *exc_info: object) -> None:
        opened, self._opened = self._opened, None
        if opened is not None:
            await opened.aclose()


@contextmanager
def single_exception() -> Iterator[None]:
    """Around a nursery that an ``open_*`` context manager yields from: its background tasks
    end quietly, so a group of one exception holds what the caller's block raised. Hand it
    on as itself, as ``async with`` promises, not wrapped in an ``ExceptionGroup``."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
