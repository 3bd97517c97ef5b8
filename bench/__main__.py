"""Run every benchmark and print one table: `python -m bench [--quick]`."""
from __future__ import annotations

import argparse

from bench import caching, hooks
from bench.harness import machine, table

BENCHMARKS = {
    "hooks": hooks,
    "caching": caching,
    "sae_training": __import__("bench.sae_training", fromlist=["run"]),
    "attribution": __import__("bench.attribution", fromlist=["run"]),
}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    p.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    args = p.parse_args()
    rows = []
    for name, mod in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        rows += mod.run(quick=args.quick)
    print(f"machine: {machine()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
