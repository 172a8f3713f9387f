"""Request signing."""

from __future__ import annotations

from etl.signing import compute_signature, signed_params

# Computed independently: printf 'c_cdrsk3y-Secretbuyer-011700000000' | sha256sum
KNOWN_VECTOR = "f0aabdfb260551735ba9e5a2968582d66da10b64d9b5c06f361d4ee28c1df49d"


def test_signature_matches_independently_computed_vector() -> None:
    """sha256(controller + key + login + ts) equals a vector computed with sha256sum."""
    assert compute_signature("k3y-Secret", "buyer-01", 1700000000) == KNOWN_VECTOR


def test_signed_params_carry_ts_login_and_signature() -> None:
    """The three auth fields are strings, and the signature changes with the timestamp."""
    first = signed_params("k3y-Secret", "buyer-01", 1700000000)
    assert first == {"ts": "1700000000", "api_login": "buyer-01", "signature": KNOWN_VECTOR}
    assert signed_params("k3y-Secret", "buyer-01", 1700000001)["signature"] != KNOWN_VECTOR
