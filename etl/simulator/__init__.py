"""A local TCXC-compatible call-history API for tests, benchmarks and demos.

It speaks the vendor's protocol (signed form POST to ``/buyers/callhistory``, ``pager``/``off``
paging, ``{"status": "success", "cdrs": [...]}``), generates realistic, deterministic CDRs, and
lets a test read the ground truth, add late or malformed records, re-rate calls and inject
faults (429, 5xx, truncated or HTML bodies, error envelopes, resets)::

    with Simulator(SimulatorConfig(cdrs=1000)) as sim:
        fetch(sim.url, login="demo", api_key="demo-key")
        assert loaded == sim.records("demo")
"""

from __future__ import annotations

from etl.simulator.config import FILTER_FIELDS, ORDERS, SimulatorConfig
from etl.simulator.faults import FAULT_KINDS, Fault
from etl.simulator.server import Simulator

__all__ = ["FAULT_KINDS", "FILTER_FIELDS", "ORDERS", "Fault", "Simulator", "SimulatorConfig"]
