"""Activation caching vs its two unavoidable parts measured alone: the forward pass and the disk write.

Goal: the cache's throughput is at least 0.8× that of the slower of the two parts, i.e. capturing,
converting, sharding and checksumming add little to what the hardware must do anyway."""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.harness import Row
from sfc_vision.activations import CaptureConfig, cache_activations, read_layers, to_vectors
from sfc_vision.data import DataConfig, load_data
from sfc_vision.models import ModelConfig, build_model
from sfc_vision.study_config import ExecutionConfig


def run(quick: bool = False) -> list[Row]:
    data = load_data(DataConfig(limit_train=1000 if quick else 4000))
    torch.manual_seed(0)
    model = build_model(ModelConfig(), data.image_shape, data.num_classes)
    cfg, batch_size = CaptureConfig(), ExecutionConfig().batch_size  # images per forward pass, as a run uses
    tmp = Path(tempfile.mkdtemp())
    with torch.inference_mode(), read_layers(model, list(cfg.layers)) as acts:  # the bytes the cache writes
        model(data.train.images([0]))
        widths = {n: to_vectors(a).shape for n, a in acts.items()}
    payload = {n: torch.zeros(len(data.train) * s[0], s[1], dtype=torch.float16) for n, s in widths.items()}

    def ours():
        out = tmp / "cache"
        cache_activations(model, data.train, cfg, out, progress=False, batch_size=batch_size)
        shutil.rmtree(out)

    def forward():
        with torch.inference_mode():
            for x, _, _ in data.train.batches(batch_size, shuffle=True, seed=0):
                model(x)

    def write():
        for n, t in payload.items():
            save_file({"acts": t}, str(tmp / f"{n}.safetensors"))
        for n in payload:
            (tmp / f"{n}.safetensors").unlink()

    fns = {"ours": ours, "forward": forward, "write": write}
    times = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(3 if quick else 7):
        for k, fn in fns.items():
            t0 = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (max(v) - min(v)) / med[k] for k, v in times.items()}
    slower = max(("forward", "write"), key=med.get)
    mb = sum(t.numel() * 2 for t in payload.values()) / 2**20
    note = (f"{len(data.train)} images, {mb:.0f} MiB float16; forward {med['forward'] * 1e3:.0f} ms, "
            f"write {med['write'] * 1e3:.0f} ms (slower: {slower})")
    shutil.rmtree(tmp)
    return [Row(f"activation caching (cnn, 3 sites) vs slower of forward / disk write", med["ours"], med[slower],
                spread["ours"], spread[slower], med[slower] / med["ours"], "speed", 0.8, note)]
