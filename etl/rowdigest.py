"""Record digests: how a re-sync recognises a page it already holds without normalising it.

``cdr.payload_digest`` (migration 0005) is a keyed BLAKE2b-128 of the record's bytes (as
orjson writes the parsed record back: the API's key order, its values); the key covers
everything else that decides the row: the account, TCXC_API_TIMEZONE, TCXC_RAW_PAYLOAD and
``CODE_VERSION``, a digest of the source of the modules that turn a record into a row. Equal
digests therefore mean the same record went through the same code with the same settings:
the stored row is exactly what normalising the record again would give.

After an upgrade that touches those modules, or a change of either setting, no stored digest
matches: each window goes through normalisation and the merge once more, which writes the
new digest into rows whose values did not change (counted as unchanged) and applies any
change the new code makes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from etl.jsonparse import dumps_text, json_number

_SOURCES = ("columns.py", "fields.py", "normalize.py", "payload.py", "pgtext.py", "rowdigest.py")


def _code_version() -> bytes:
    digest = hashlib.blake2b(digest_size=32)
    here = Path(__file__).resolve().parent
    for name in _SOURCES:
        digest.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
    return digest.digest()


CODE_VERSION = _code_version()


class Digester:
    """Digests of one account's records under given settings."""

    def __init__(self, api_login: str, time_zone: str, raw_payload: str) -> None:
        login = api_login.encode("utf-8", "surrogatepass")
        context = b"\0".join((CODE_VERSION, login, time_zone.encode(), raw_payload.encode()))
        key = hashlib.blake2b(context, digest_size=64).digest()
        # Keyed once: each record's hash starts from a copy (the key block is not hashed again).
        self._keyed = hashlib.blake2b(digest_size=16, key=key)

    def digest(self, record: Any) -> bytes:
        state = self._keyed.copy()
        state.update(_record_bytes(record))
        return state.digest()

    def digests(self, records: Sequence[Any]) -> list[bytes]:
        fresh = self._keyed.copy
        out: list[bytes] = []
        try:
            for data in map(orjson.dumps, records):
                state = fresh()
                state.update(data)
                out.append(state.digest())
        except TypeError:  # a value orjson refuses (an integer beyond 64 bits)
            return list(map(self.digest, records))
        return out


def _record_bytes(record: Any) -> bytes:
    try:
        return orjson.dumps(record, default=json_number)  # a Decimal: its digits as sent
    except TypeError:  # a string that is not valid Unicode, an integer beyond 64 bits
        return b"\1" + dumps_text(record).encode()  # (ASCII) never equal to orjson's bytes


def copy_texts(digests: Sequence[bytes]) -> list[str]:
    """Digests as COPY text fields of a bytea column (hex format, backslash escaped)."""
    return ["\\\\x" + digest.hex() for digest in digests]
