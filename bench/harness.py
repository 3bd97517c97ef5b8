"""Side-by-side timing: ours and a reference alternate in one run; medians, spreads and ratios."""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Row:
    "One benchmark: median seconds per call of ours and of the reference, and how the ratio is judged."
    name: str
    ours_s: float
    ref_s: float
    ours_spread: float
    ref_spread: float
    ratio: float        # as defined by `ratio_kind`
    ratio_kind: str     # "time" (ours/ref, lower is better) or "speed" (ref/ours, higher is better)
    goal: float
    note: str = ""

    @property
    def met(self) -> bool:
        return self.ratio <= self.goal if self.ratio_kind == "time" else self.ratio >= self.goal


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compare(name: str, ours: Callable[[], object], ref: Callable[[], object], goal: float,
            ratio_kind: str = "time", repeats: int = 7, warmup: int = 2, note: str = "") -> Row:
    """Time `ours` and `ref` alternately (`warmup` untimed rounds, then `repeats` timed rounds).

    Alternating spreads drifts of the machine (frequency, other processes) over both evenly."""
    for _ in range(warmup):
        ours(); ref()
    t_ours, t_ref = [], []
    for _ in range(repeats):
        for fn, out in ((ours, t_ours), (ref, t_ref)):
            _sync(); t0 = time.perf_counter(); fn(); _sync()
            out.append(time.perf_counter() - t0)
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    spread = lambda ts, m: (max(ts) - min(ts)) / m
    ratio = mo / mr if ratio_kind == "time" else mr / mo
    return Row(name, mo, mr, spread(t_ours, mo), spread(t_ref, mr), ratio, ratio_kind, goal, note)


def machine() -> str:
    "A one-line description of where the numbers came from."
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
            f"{dev}, Python {platform.python_version()}")


def table(rows: list[Row]) -> str:
    "A Markdown table of the rows."
    out = ["| benchmark | ours (median) | reference (median) | ratio | goal | met |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        kind = "ours/ref time" if r.ratio_kind == "time" else "ref/ours time (speed)"
        goal = f"≤ {r.goal:g}" if r.ratio_kind == "time" else f"≥ {r.goal:g}"
        out.append(f"| {r.name} | {r.ours_s * 1e3:.2f} ms ±{r.ours_spread:.0%} | {r.ref_s * 1e3:.2f} ms ±{r.ref_spread:.0%} "
                   f"| {r.ratio:.3f} ({kind}) | {goal} | {'yes' if r.met else 'NO'} |")
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note]
    return "\n".join(out + ([""] + notes if notes else []))
