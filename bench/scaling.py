"""Scaling: how the cost of each stage grows with dataset size, number of sites, SAE width and image size.

No reference here: each line is one stage timed (median of three) at growing sizes, with the cost per
unit, so that superlinear growth shows as a growing per-unit column. Nothing may grow faster than
linearly in the number of images.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sfc_vision.activations import ActivationCache, CaptureConfig, cache_activations
from sfc_vision.attribution import make_metric, node_effects
from sfc_vision.circuits import faithfulness_curve
from sfc_vision.data import DataConfig, TensorImageSet, load_data
from sfc_vision.models import ModelConfig, build_model
from sfc_vision.sae import ReLUSAE, SAEConfig
from sfc_vision.sae_train import train_saes
from sfc_vision.splice import Splice, mean_patches

CNN_SITES = {"pool1": 16, "pool2": 32, "relu3": 128}


def _median(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _series(stage: str, unit: str, sizes: list, fn, repeats: int, units=lambda size: size) -> list[tuple]:
    "`(stage, size, seconds, seconds per unit)` for each size; `units(size)` counts the units (default: size)."
    rows = []
    for size in sizes:
        t = _median(lambda: fn(size), repeats)
        rows.append((stage, f"{size} {unit}", t, t / units(size)))
    return rows


def run(quick: bool = False) -> list[tuple]:
    repeats = 1 if quick else 3
    torch.manual_seed(0)
    data = load_data(DataConfig())
    model = build_model(ModelConfig(), data.image_shape, data.num_classes).eval()
    ce = make_metric("ce", data.class_names)
    splice = Splice(model, {s: ReLUSAE(d, 4 * d) for s, d in CNN_SITES.items()})
    patches = mean_patches(splice, data.train.subset(torch.arange(500)), progress=False)
    sizes = [500, 1000, 2000] if quick else [500, 1000, 2000, 4000]
    tmp = Path(tempfile.mkdtemp())
    rows = []
    try:
        def cache(n):
            cache_activations(model, data.train.subset(torch.arange(n)), CaptureConfig(), tmp / f"c{n}",
                              progress=False)
            shutil.rmtree(tmp / f"c{n}")

        rows += _series("activation caching (cnn, 3 sites)", "images", sizes, cache, repeats)
        cache_activations(model, data.train, CaptureConfig(), tmp / "acts", progress=False)
        pool2 = ActivationCache(tmp / "acts" / "pool2")
        per_image = pool2.n_vectors // len(data.train)

        def sae(n, expansion=8):
            x = pool2.load_all("cpu")[:n * per_image]
            cfg = SAEConfig(expansion=expansion, steps=max(1, len(x) // 4096), batch_size=4096, lr_warmup=0.05, checkpoints=1)  # one pass
            train_saes(x, [cfg], [tmp / "sae"], progress=False, log_every=100)
            shutil.rmtree(tmp / "sae")

        rows += _series("SAE training, 1 epoch (pool2, 32→256)", "images", sizes, sae, repeats)
        rows += _series("node effects, AtP (cnn, 3 sites)", "images", sizes,
                        lambda n: node_effects(splice, data.train.subset(torch.arange(n)), ce, patches, progress=False),
                        repeats)
        ie = node_effects(splice, data.train.subset(torch.arange(500)), ce, patches, progress=False).mean
        rows += _series("faithfulness curve, 12 thresholds", "images", [250, 500, 1000],
                        lambda n: faithfulness_curve(splice, ie, data.test.subset(torch.arange(n)), ce, patches,
                                                     n_random=0, progress=False), repeats)
        images = data.train.subset(torch.arange(1000))
        rows += _series("node effects, AtP over 1000 images", "sites", [1, 2, 3],
                        lambda k: node_effects(Splice(model, {s: splice.dicts[s] for s in list(CNN_SITES)[:k]}), images,
                                               ce, {s: patches[s] for s in list(CNN_SITES)[:k]}, progress=False),
                        repeats)
        rows += _series("SAE training, 1 epoch of 2000 images (pool2)", "× expansion", [2, 4, 8, 16],
                        lambda e: sae(2000, e), repeats)

        def image_size(side, n=32):
            m = build_model(ModelConfig(arch="resnet18_small"), (3, side, side), 10).eval()
            imgs = TensorImageSet(torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8),
                                  torch.randint(0, 10, (n,)), [str(i) for i in range(10)])
            sp = Splice(m, {"layer2": ReLUSAE(128, 512), "layer3": ReLUSAE(256, 1024)})
            node_effects(sp, imgs, make_metric("ce", imgs.class_names), mean_patches(sp, imgs, progress=False),
                         batch_size=n, progress=False)

        rows += _series("AtP, resnet18_small, 32 images, layer2+layer3", "px side", [32, 64] if quick else [32, 64, 128],
                        image_size, repeats, units=lambda side: side * side)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def table(rows: list[tuple]) -> str:
    "A Markdown table: stage, size, median time, time per unit (per pixel for image size)."
    out = ["| stage | size | median | per unit |", "|---|---|---|---|"]
    for stage, size, t, per in rows:
        unit = "per pixel" if "px" in size else "per " + size.split(" ", 1)[1].replace("× ", "").rstrip("s")
        out.append(f"| {stage} | {size} | {t * 1e3:.0f} ms | {per * 1e6:.1f} µs {unit} |")
    return "\n".join(out)
