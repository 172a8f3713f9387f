"""The example questions of ``docs/queries.md`` and their SQL, read back from the markdown
(for the test that runs them against the views, and the query benchmark)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class DocumentedQuery:
    """One example question of docs/queries.md and its SQL."""

    number: int
    question: str
    sql: str


_HEADING = re.compile(r"^### (\d+)\. (.+)$")
_SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.MULTILINE | re.DOTALL)


def documented_queries(markdown: str) -> list[DocumentedQuery]:
    """The ``### N. question`` sections of a markdown text, each with its first sql block."""
    found: list[DocumentedQuery] = []
    for section in re.split(r"^(?=### \d+\. )", markdown, flags=re.MULTILINE):
        heading = _HEADING.match(section.split("\n", 1)[0])
        block = _SQL_BLOCK.search(section)
        if heading and block:
            sql = block.group(1).strip().rstrip(";")
            found.append(DocumentedQuery(int(heading.group(1)), heading.group(2).strip(), sql))
    return found
