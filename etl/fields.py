"""The documented fields of a TCXC call-history record: name, kind, and how the API spells
and types them. Shared by normalisation, the schema and the raw-payload modes."""

from __future__ import annotations

TEXT, BIGINT, COUNT, DECIMAL, TIME = "text", "bigint", "count", "decimal", "time"
# What the typed columns hold: text up to MAX_TEXT characters, non-negative ids and counts
# within PostgreSQL's bigint and integer.
MAX_TEXT = 2000
BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1

# Every documented field, in column order. Column names are the API's names in lower case.
FIELD_KINDS: dict[str, str] = {
    "i_cdr": BIGINT,
    "cld": TEXT,
    "cli": TEXT,
    "call_id": TEXT,
    "duration": COUNT,
    "billed_duration": COUNT,
    "connect_time": TIME,
    "disconnect_time": TIME,
    "setup_time": TIME,
    "billing_prefix": TEXT,
    "billing_price_1": DECIMAL,
    "billing_price_n": DECIMAL,
    "billing_interval_1": COUNT,
    "billing_interval_n": COUNT,
    "customer_amount": DECIMAL,
    "i_customer": BIGINT,
    "i_account": BIGINT,
    "i_vendor": BIGINT,
    "i_connection": BIGINT,
    "i_purchased_route": BIGINT,
    "disconnect_code": COUNT,
    "customer_ip": TEXT,
    "i_rate": BIGINT,
    "vendor_name": TEXT,
    "account_name": TEXT,
    "connection_name": TEXT,
    "disconnect_reason": TEXT,
    "country_name": TEXT,
    "description": TEXT,
}
FIELDS: tuple[str, ...] = tuple(FIELD_KINDS)
# The API spells two documented fields in upper case.
API_KEYS: tuple[str, ...] = tuple({"cld": "CLD", "cli": "CLI"}.get(name, name) for name in FIELDS)
API_KEY_SET = frozenset(API_KEYS)
# The documented fields the API sends as JSON numbers; it sends every other one as a string.
NUMBER_FIELDS = frozenset({"billing_price_1", "billing_price_n"})
# The time fields, the setup first (when several could be the API's date filter, it is taken
# as the likeliest).
TIME_FIELDS = ("setup_time", "connect_time", "disconnect_time")
# Values the API uses for "no time".
ZERO_TIMES = frozenset({"0000-00-00 00:00:00", "0000-00-00"})
