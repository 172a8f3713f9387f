"""The API simulator in its own process, so its CPU is never counted as tcxc-etl's.

Started by ``load_bench.py``: prints ``URL <url>`` once it listens, then answers each ``stats``
line on stdin with one JSON line (the simulator's request counters, its handler threads' CPU
seconds and the whole process's CPU seconds) and stops at end of input. With ``--accounts N``
(N > 1) it serves logins ``LOGIN1`` .. ``LOGINN`` (keys ``KEY1`` .. ``KEYN``) and splits
``--cdrs`` evenly between them, so the total stays the same.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from datetime import datetime, timedelta

from common import simulator_accounts

from etl.simulator import Simulator, SimulatorConfig


def process_cpu() -> float:
    """CPU seconds (user + system) this process used so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cdrs", type=int, required=True)
    parser.add_argument("--days", type=int, required=True)
    parser.add_argument("--end", required=True, help="naive end of the data, API zone (UTC)")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--login", default="bench")
    parser.add_argument("--key", default="bench-key")
    parser.add_argument(
        "--accounts", type=int, default=1, help="N > 1: logins LOGIN1..LOGINN, --cdrs split"
    )
    args = parser.parse_args()
    if args.accounts < 1 or args.cdrs % args.accounts:
        parser.error(f"--cdrs {args.cdrs} does not split evenly into {args.accounts} accounts")
    end = datetime.fromisoformat(args.end)
    config = SimulatorConfig(
        accounts=simulator_accounts(args.login, args.key, args.accounts),
        cdrs=args.cdrs // args.accounts,
        start=end - timedelta(days=args.days),
        end=end,
        latency=args.latency,
    )
    with Simulator(config) as sim:
        print(f"URL {sim.url}", flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                stats = {**sim.stats(), "process_cpu_seconds": process_cpu(), "pid": os.getpid()}
                print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
