"""Logging set-up: key=value lines on stderr, with secrets redacted from every record.

The redaction is a last line of defence: no code path logs the key or a signature on
purpose, but third-party libraries at DEBUG level may log request details.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

_SIGNATURE = re.compile(r"\b[0-9a-fA-F]{64}\b")
_WORD = re.compile(r"[^\s'\"=&:,;()\[\]{}<>]{6,}")  # a run that could be a piece of a secret
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret, and each run of 6 or more characters that is a piece of
    one (a secret an echo cut short), shown as ***; and anything shaped like a signature."""
    kept = [secret for secret in secrets if len(secret) >= 4]
    for secret in kept:
        text = text.replace(secret, "***")

    def piece(match: re.Match[str]) -> str:
        word = match.group(0)
        return "***" if any(word in secret for secret in kept) else word

    return _SIGNATURE.sub("***", _WORD.sub(piece, text) if kept else text)


def _whole_word(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.-]){re.escape(word)}(?![\w.-])")


class RedactingFilter(logging.Filter):
    """Replaces known secrets and anything shaped like a SHA-256 signature with ***.

    ``secrets`` (API keys) are also masked in part (see ``scrub``); ``exact`` ones (a database
    URL, whose words such as its host are no secret) only whole; ``words`` (a database
    password, which may be as plain as its user's name) only where no letter, digit or one of
    ``_.-`` touches it (``tcxc`` in ``password=tcxc&`` but not in ``tcxc-etl``)."""

    def __init__(
        self, secrets: Iterable[str] = (), exact: Iterable[str] = (), words: Iterable[str] = ()
    ) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if len(secret) >= 4]
        self.exact = [secret for secret in exact if len(secret) >= 4]
        self.words = [_whole_word(word) for word in words if len(word) >= 4]

    def redact(self, text: str) -> str:
        for secret in self.exact:
            text = text.replace(secret, "***")
        for word in self.words:
            text = word.sub("***", text)
        return scrub(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if record.exc_info and record.exc_text is None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


def configure(
    verbose: bool,
    secrets: Iterable[str] = (),
    exact: Iterable[str] = (),
    words: Iterable[str] = (),
) -> RedactingFilter:
    """Send log records to stderr through a redacting filter; return the filter."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    redactor = RedactingFilter(secrets, exact, words)
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.DEBUG if verbose else logging.WARNING)
    for noisy in ("alembic", "sqlalchemy", "apscheduler"):  # SQL echo is too loud for logs
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redactor
