"""Run every benchmark and print one table, then the scaling table: `python -m bench [--quick] [--only NAME ...]`.

The GPU benchmark (ResNet-18 / GoogLeNet at 224×224, bf16) is separate: `python -m bench.gpu`."""
from __future__ import annotations

import argparse
import time

from bench import attribution, caching, featvis, hooks, sae_training, scaling, vit
from bench.harness import machine, table

BENCHMARKS = {"hooks": hooks, "caching": caching, "sae_training": sae_training, "attribution": attribution, "featvis": featvis,
              "vit": vit}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    p.add_argument("--only", nargs="*", choices=sorted([*BENCHMARKS, "scaling"]), help="run only these")
    args = p.parse_args()
    wanted = lambda name: not args.only or name in args.only
    t0 = time.perf_counter()
    rows = [row for name, mod in BENCHMARKS.items() if wanted(name) for row in mod.run(quick=args.quick)]
    print(f"{time.strftime('%Y-%m-%d')}, machine: {machine()}\n")
    if rows:
        print(table(rows))
    if wanted("scaling"):
        print("\nscaling (median of 3; the last column must not grow with the number of images):\n")
        print(scaling.table(scaling.run(quick=args.quick)))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
