"""Database URLs: which forms tcxc-etl accepts, and how one is shown without its passwords.

libpq takes a password after the user name (even an empty one) and in the ``password`` and
``sslpassword`` query parameters, their keys %-encoded or not: every form is masked wherever a
URL is printed, and each password is what log lines and errors must never show.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

DATABASE_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


def check_database_url(text: str) -> str:
    """``text``, if it is a DATABASE_URL tcxc-etl can use; else ValueError saying why (the
    settings check names the setting, never the value)."""
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme not in DATABASE_SCHEMES:
        raise ValueError(
            "must be a postgresql:// URL (or postgres://, postgresql+psycopg://: the driver "
            "is psycopg 3)"
        )
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise ValueError("holds a '%' that starts no %-escape (write '%' itself as %25)")
    # libpq would read the part after a second '@' as the host and quote it in its error.
    if text.split("://", 1)[1].split("/", 1)[0].count("@") > 1:
        raise ValueError("its user or password holds '@': write it as %40")
    try:
        parts = urlsplit(text)
        _ = parts.hostname, parts.port
    except ValueError:
        raise ValueError(
            "its host or port cannot be read (a port is a number, an IPv6 host is in [])"
        ) from None
    for key, value in query_parameters(text):
        if unquote(key) == "port" and not all(
            part.isascii() and part.isdigit() and 0 < int(part) < 65536
            for part in unquote(value).split(",")
        ):
            raise ValueError("its port parameter must be a number from 1 to 65535")
    return text


def without_userinfo(text: str) -> str:
    """``text`` with anything between '://' and an '@' of the authority shown as ***."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", text)


# Query parameters of a libpq URL that hold a password (libpq decodes a key's %-escapes too).
PASSWORD_PARAMETERS = frozenset({"password", "sslpassword"})


def split_url(url: str) -> tuple[str, str, str] | None:
    """``url`` as (up to and with '://', the authority, the rest from its '/' or '?'), or
    None when it has no '://'."""
    head, sep, rest = url.partition("://")
    if not sep:
        return None
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    return head + sep, rest[:end], rest[end:]


def query_parameters(rest: str) -> list[tuple[str, str]]:
    """The ``key=value`` pairs of the query in ``rest``, as written (not decoded)."""
    pairs = (pair.partition("=") for pair in rest.partition("?")[2].split("&") if pair)
    return [(key, value) for key, _, value in pairs]


def url_passwords(url: str) -> list[str]:
    """Every password a libpq URL carries (after the user name's ':', a ``password=`` or
    ``sslpassword=`` parameter), as written and %-decoded: what a log line must never show."""
    parts = split_url(url)
    if parts is None:
        return []
    _, authority, rest = parts
    found = []
    userinfo, at, _ = authority.rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    for key, value in query_parameters(rest):
        if unquote(key).lower() in PASSWORD_PARAMETERS:
            found.append(value)
    return list(dict.fromkeys(form for text in found if text for form in (text, unquote(text))))


def mask_url(url: str) -> str:
    """A database URL with each password (after the user name, even an empty one, and in a
    ``password=``/``sslpassword=`` query parameter, its key %-encoded or not) shown as ***,
    safe to print."""
    parts = split_url(url)
    if parts is None:
        return url
    head, authority, rest = parts
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.partition(':')[0]}:***@{hosts}"
    path, question, query = rest.partition("?")
    pairs = []
    for pair in query.split("&"):
        key, equals, _value = pair.partition("=")
        hidden = equals and unquote(key).lower() in PASSWORD_PARAMETERS
        pairs.append(f"{key}=***" if hidden else pair)
    return head + authority + path + question + "&".join(pairs)
