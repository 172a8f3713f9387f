"""The command line (``tcxc-etl``): a thin layer over the pipeline."""

from __future__ import annotations

from etl.cli import local, ops, sync  # noqa: F401 - importing registers the commands
from etl.cli.base import cli, main

__all__ = ["cli", "main"]
