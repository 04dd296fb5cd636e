"""Small trio helpers shared by the runtime and the transports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["single_exception"]


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
