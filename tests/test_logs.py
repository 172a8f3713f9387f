"""Log redaction."""

from __future__ import annotations

from etl.logs import RedactingFilter


def test_a_database_password_is_redacted_as_a_whole_word_only() -> None:
    """A database password (``words``) is masked where it stands alone, as in a URL's query
    or user info, but not inside a longer word (a password ``tcxc`` leaves ``tcxc-etl``)."""
    redactor = RedactingFilter(words=["tcxc", "Sup3r%40pw"])
    assert redactor.redact("url=x://h/d?password=tcxc&user=u") == "url=x://h/d?password=***&user=u"
    assert redactor.redact("run `tcxc-etl migrate` on tcxc.example") == (
        "run `tcxc-etl migrate` on tcxc.example"
    )
    assert redactor.redact("postgresql://u:Sup3r%40pw@h/d") == "postgresql://u:***@h/d"
