"""Billing arithmetic of a wholesale voice call, exact in integer micro-units."""

from __future__ import annotations


def billed_seconds(duration: int, first: int, next_: int) -> int:
    """Billed seconds under an ``X/Y`` increment: X minimum, then whole Y blocks."""
    if duration <= 0:
        return 0
    if duration <= first:
        return first
    return first + -(-(duration - first) // next_) * next_


def amount_micro(billed: int, first: int, price_1: int, price_n: int) -> int:
    """``(X * p1 + (billed - X) * pn) / 60`` in micro-units, rounded half up."""
    numerator = first * price_1 + (billed - first) * price_n
    return (2 * numerator + 60) // 120


def format_micro(value: int) -> str:
    """Micro-units as a decimal string with six places: 680 -> '0.000680'."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"
