"""The two kinds of task a stage is, and the clock that times a run's stages.

A stage's wall time (retries included) is added to the running flow's `stage_clock`
under the stage's name, once: a stage called inside another (an encode chunk inside
"index candidate") counts as part of the outer one.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

F = TypeVar("F", bound=Callable[..., Any])
_seconds: ContextVar[dict[str, float] | None] = ContextVar("stage_seconds", default=None)
_inside: ContextVar[bool] = ContextVar("inside_stage", default=False)


@contextlib.contextmanager
def stage_clock() -> Iterator[dict[str, float]]:
    """Time every stage run within the block: {stage name: seconds}."""
    seconds: dict[str, float] = {}
    token = _seconds.set(seconds)
    try:
        yield seconds
    finally:
        _seconds.reset(token)


class _Timed:
    """`fn`, adding its wall time to the running clock. A class, not a closure: the Dask
    runner pickles a task's function, and an instance pickles its function alone."""

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        functools.update_wrapper(self, fn)
        self.name, self.fn = name, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        seconds = _seconds.get()
        if seconds is None or _inside.get():
            return self.fn(*args, **kwargs)
        token, started = _inside.set(True), time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            _inside.reset(token)
            seconds[self.name] = seconds.get(self.name, 0.0) + time.perf_counter() - started


def stage(name: str, **options: Any) -> Callable[[F], Any]:
    """A pipeline stage: a Prefect task, never cached. DataFrames, models and vectors pass
    between stages in memory: hashing them for a cache key would cost time and buy
    nothing (every run sees new data)."""
    return lambda fn: task(_Timed(name, fn), name=name, cache_policy=NO_CACHE, **options)


def io_stage(name: str) -> Callable[[F], Any]:
    """A stage that does I/O that can fail transiently (files on network storage, the
    tracking server): retried twice, after 2 s and 10 s."""
    return stage(name, retries=2, retry_delay_seconds=[2, 10])
