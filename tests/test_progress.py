"""Backfill progress off a terminal: log lines that count the windows done."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from etl.progress import WindowProgress
from etl.state import Counts
from etl.windows import Window


def test_progress_lines_count_windows_without_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    start = datetime(2026, 9, 1, tzinfo=UTC)
    windows = [Window(start + timedelta(days=n), start + timedelta(days=n + 1)) for n in range(3)]
    caplog.set_level(logging.INFO, logger="etl.progress")
    with WindowProgress(len(windows)) as progress:  # pytest's stderr is not a terminal
        for window in windows:
            progress.update(window, Counts(rows_fetched=10))
    lines = [r.getMessage() for r in caplog.records if r.name == "etl.progress"]
    assert [line.split(" last_window")[0] for line in lines] == [
        "progress windows=1/3 rows=10",
        "progress windows=2/3 rows=20",
        "progress windows=3/3 rows=30",
    ]
