from __future__ import annotations

import functools

from prefect import task
from prefect.cache_policies import NO_CACHE

# DataFrames, models and vectors pass between stages in memory: hashing them for a
# cache key would cost time and buy nothing (every run sees new data).
stage = functools.partial(task, cache_policy=NO_CACHE)
# I/O that can fail transiently (files on network storage, the tracking server).
io_stage = functools.partial(task, cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
