"""Where a stage writes its progress lines: `logging.Logger`, a `LoggerAdapter` and
Prefect's run logger all meet this."""

from __future__ import annotations

from typing import Protocol


class Log(Protocol):
    def info(self, msg: str, /, *args: object) -> None: ...

    def warning(self, msg: str, /, *args: object) -> None: ...
