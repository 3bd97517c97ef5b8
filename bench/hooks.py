"""Hook overhead: a forward pass that reads the study's sites through `read_layers` vs a plain forward."""
from __future__ import annotations

import torch

from bench.harness import Row, compare
from sfc_vision.activations import read_layers
from sfc_vision.models import ModelConfig, build_model


def run(quick: bool = False) -> list[Row]:
    rows = []
    cases = [("cnn", (1, 28, 28), 512, ["pool1", "pool2", "relu3"]),
             ("resnet18", (3, 64, 64), 32, ["layer2", "layer3", "layer4"])]
    for arch, shape, batch, sites in cases:
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch=arch), shape, 10)
        x = torch.rand(batch, *shape)

        def plain():
            with torch.inference_mode():
                model(x)

        def hooked():
            with torch.inference_mode(), read_layers(model, sites) as acts:
                model(x)
            return acts

        rows.append(compare(f"hook overhead: {arch} forward reading {len(sites)} sites (batch {batch})",
                            hooked, plain, goal=1.05, ratio_kind="time", repeats=5 if quick else 15))
    return rows
