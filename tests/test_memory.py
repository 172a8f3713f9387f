"""The malloc settings that keep peak memory independent of the thread count."""

from __future__ import annotations

import platform

import pytest

from etl import memory


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_glibc_takes_the_malloc_settings() -> None:
    """mallopt answers 0 for a parameter it does not know: this fails on a wrong constant."""
    assert memory.limit_heap_growth() is True
