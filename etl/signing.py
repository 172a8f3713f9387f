"""How a TCXC API request is signed.

The vendor documents ``signature = sha256(controller + api_key + api_login + ts)`` with the
controller ``c_cdrs`` for ``buyers/callhistory``. Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

import hashlib

CONTROLLER = "c_cdrs"


def compute_signature(api_key: str, api_login: str, ts: int, controller: str = CONTROLLER) -> str:
    """Return the hex SHA-256 signature for one request made at unix time ``ts``."""
    message = f"{controller}{api_key}{api_login}{ts}"
    return hashlib.sha256(message.encode("utf-8")).hexdigest()


def signed_params(api_key: str, api_login: str, ts: int) -> dict[str, str]:
    """The three authentication form fields of a request made at unix time ``ts``."""
    return {
        "ts": str(ts),
        "api_login": api_login,
        "signature": compute_signature(api_key, api_login, ts),
    }
