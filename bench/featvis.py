"""Feature visualisation: seconds per visualised unit on this machine, against one forward + backward pass of the same batch."""
from __future__ import annotations

import torch

from bench.harness import Row, compare
from sfc_vision.featvis import unit_objective, visualize_units
from sfc_vision.models import ModelConfig, build_model
from sfc_vision.sae import IdentityDictionary


def run(quick: bool = False) -> list[Row]:
    rows = []
    # (arch, image shape, site, its channels, units per call, steps)
    # goal: on the tiny CNN the image parametrisation (FFT, colour, affine resampling) outweighs the network
    cases = [("cnn", (1, 28, 28), "pool2", 32, 8, 512, 4.0), ("googlenet", (3, 128, 128), "mixed4a", 512, 4, 64, 1.5)]
    for arch, shape, site, channels, n_units, steps, goal in cases:
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch=arch), shape, 10)
        d = IdentityDictionary(channels)
        steps = max(steps // 8, 4) if quick else steps

        def ours():
            visualize_units(model, site, d, list(range(n_units)), image_size=shape[1], steps=steps, device="cpu")

        def one_step():  # the reference: one forward to the site and backward for the same batch, times the steps
            x = torch.rand(n_units, *shape, requires_grad=True)
            unit_objective(model, site, d)(x)[:, :n_units].diagonal().sum().backward()

        row = compare(f"feature visualisation: {arch} {site}, {n_units} units × {steps} steps at {shape[1]} px",
                      ours, lambda: [one_step() for _ in range(steps)], goal=goal, ratio_kind="time",
                      repeats=1 if quick else 3, warmup=0 if quick else 1)
        row.note = (f"{row.ours_s / n_units:.2f} s per unit; the reference is the bare forward+backward to the site "
                    f"for the same steps (the parametrisation and transforms are the overhead)")
        rows.append(row)
    return rows
