"""Static reference tables the simulator draws its CDRs from.

Destinations carry real country codes and names, a billing increment ``X/Y`` and per-minute
prices in micro-units (1 = 0.000001); vendors are plausible wholesale carriers; disconnect codes
are ITU-T Q.850 causes with their standard reasons.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Destination:
    """One rated destination: the CLD starts with ``prefix`` and has ``digits`` digits."""

    prefix: str
    country_name: str
    description: str
    digits: int
    interval_1: int
    interval_n: int
    price_1_micro: int
    price_n_micro: int
    weight: int


@dataclass(frozen=True)
class Vendor:
    """A terminating carrier and the factor (in percent) it applies to the base price."""

    i_vendor: int
    name: str
    price_percent: int


DESTINATIONS: tuple[Destination, ...] = (
    Destination("441", "United Kingdom", "Fixed - Geographic", 12, 60, 60, 2100, 2100, 5),
    Destination("447", "United Kingdom", "Mobile", 12, 1, 1, 8500, 8500, 8),
    Destination("1201", "United States of America", "Fixed - ROC", 11, 6, 6, 4987, 4987, 6),
    Destination("1212", "United States of America", "Fixed - New York", 11, 6, 6, 3900, 3900, 6),
    Destination("1310", "United States of America", "Mobile - California", 11, 6, 6, 4100, 4100, 5),
    Destination("4930", "Germany", "Fixed - Berlin", 12, 60, 60, 1800, 1800, 3),
    Destination("4915", "Germany", "Mobile", 13, 60, 60, 12500, 12500, 4),
    Destination("331", "France", "Fixed - Paris", 11, 60, 60, 2300, 2300, 3),
    Destination("336", "France", "Mobile", 11, 30, 6, 14200, 14200, 4),
    Destination("9111", "India", "Fixed - Delhi", 12, 1, 1, 9800, 9800, 4),
    Destination("9198", "India", "Mobile", 12, 1, 1, 7600, 7600, 8),
    Destination("234803", "Nigeria", "Mobile - MTN", 13, 60, 60, 61000, 61000, 5),
    Destination("2010", "Egypt", "Mobile - Vodafone", 12, 1, 1, 89000, 89000, 4),
    Destination("97150", "United Arab Emirates", "Mobile - Etisalat", 12, 30, 6, 142000, 98000, 3),
    Destination("63917", "Philippines", "Mobile - Globe", 12, 60, 60, 118000, 118000, 4),
    Destination("5255", "Mexico", "Fixed - Mexico City", 12, 60, 60, 3100, 3100, 3),
    Destination("52155", "Mexico", "Mobile", 13, 60, 60, 9700, 9700, 3),
    Destination("5511", "Brazil", "Fixed - Sao Paulo", 12, 30, 6, 4200, 3900, 3),
    Destination("55119", "Brazil", "Mobile - Sao Paulo", 13, 30, 6, 16800, 15400, 4),
    Destination("7495", "Russia", "Fixed - Moscow", 11, 60, 60, 16000, 16000, 2),
    Destination("79", "Russia", "Mobile", 11, 60, 60, 41000, 41000, 3),
    Destination("8610", "China", "Fixed - Beijing", 12, 6, 6, 6400, 6400, 3),
    Destination("86139", "China", "Mobile", 13, 6, 6, 7100, 7100, 4),
)

VENDORS: tuple[Vendor, ...] = (
    Vendor(13, "IDT", 100),
    Vendor(21, "BICS", 108),
    Vendor(34, "Telia Carrier", 104),
    Vendor(42, "Tata Communications", 96),
    Vendor(57, "iBasis", 102),
    Vendor(68, "Orange Wholesale", 112),
)

NORMAL_CLEARING = 16

Q850_REASONS: dict[int, str] = {
    1: "Unallocated Number",
    3: "No Route To Destination",
    16: "Normal Call Clearing",
    17: "User Busy",
    18: "No User Responding",
    19: "No Answer",
    21: "Call Rejected",
    27: "Destination Out Of Order",
    28: "Invalid Number Format",
    31: "Normal Unspecified",
    34: "No Circuit Available",
    38: "Network Out Of Order",
    41: "Temporary Failure",
    42: "Switching Equipment Congestion",
    47: "Resource Unavailable",
    63: "Service Not Available",
    102: "Recovery On Timer Expiry",
    127: "Interworking Unspecified",
}

# Relative frequency of each cause among failed calls (16 also occurs on failed calls, as in
# the vendor's own sample).
FAILURE_WEIGHTS: dict[int, int] = {
    17: 22,
    19: 14,
    18: 10,
    31: 6,
    21: 6,
    1: 6,
    3: 5,
    34: 5,
    41: 5,
    27: 4,
    42: 4,
    16: 4,
    28: 3,
    38: 3,
    127: 3,
    47: 2,
    63: 2,
    102: 2,
}

# Caller-ID ranges the simulated customer originates from: (first number, count).
CLI_POOLS: tuple[tuple[int, int], ...] = (
    (18552000000, 999999),
    (12014700000, 99999),
    (447700900000, 99999),
    (13105550000, 9999),
)
