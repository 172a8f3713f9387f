"""tcxc-etl: keep a PostgreSQL warehouse of TelecomsXChange buyer CDRs complete and current."""

from __future__ import annotations

__version__ = "0.1.0"
