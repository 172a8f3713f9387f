"""Backfill progress: a bar (windows and rows, rate, ETA) on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
from types import TracebackType

from tqdm import tqdm

from etl.state import Counts
from etl.windows import Window

log = logging.getLogger(__name__)


class WindowProgress:
    """Counts windows done; tqdm draws the bar when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.rows = 0
        self.done = 0  # (a disabled tqdm bar does not count)
        self.bar = tqdm(
            total=total, unit="window", file=sys.stderr, disable=not sys.stderr.isatty()
        )

    def update(self, window: Window, counts: Counts | None, covers: int = 1) -> None:
        """``window`` ended (``counts`` None: it failed), covering ``covers`` planned ones."""
        if counts is not None:
            self.rows += counts.rows_fetched
        self.done += covers
        self.bar.update(covers)
        self.bar.set_postfix(rows=self.rows, refresh=False)
        if self.bar.disable:
            log.info(
                "progress windows=%d/%d rows=%d last_window=%s",
                self.done,
                self.total,
                self.rows,
                window,
            )

    def __enter__(self) -> WindowProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.bar.close()
