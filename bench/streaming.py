"""Streaming SAE training (`capture.store: stream`): throughput against the disk cache, and peak memory against the
number of images.

`python -m bench.streaming [--quick]` prints two tables:

- **throughput**, in CPU seconds (`time.process_time`, this process and its threads) of the contenders run
  alternately in one process, since wall-clock time on a machine shared with other jobs means little: SAE
  training streamed from the model (a buffer of a quarter pass) against (a) training from an existing cache and
  (b) capturing the cache, then training from it — the same SAE steps, the same number of passes;
- **peak memory**: the peak resident set size (`VmHWM`) of a fresh subprocess per size that trains one pass
  over 1× and 10× the images, streamed (buffer fixed) and, as a control that the measurement sees growth, from the
  vectors held in memory. Images are generated on demand from their index (no image set in memory), so the
  vectors are the only thing that could grow with the number of images.

Sizes: a random CNN (channels 16, 64) on 28 × 28 one-channel images; `pool2` gives 49 vectors of 64 dims per image.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sfc_vision.activations import ActivationCache, CaptureConfig, StreamingActivations, cache_activations
from sfc_vision.data import ImageSet
from sfc_vision.models import ModelConfig, build_model
from sfc_vision.sae import SAEConfig
from sfc_vision.sae_train import InMemoryVectors, train_saes

LAYER, PER_IMAGE, WIDTH = "pool2", 49, 64


class GeneratedImages(ImageSet):
    "Images made from their index on demand (seeded noise over a stripe pattern): a dataset of any size in no memory."
    class_names = [str(i) for i in range(10)]

    def __init__(self, n: int):
        self.labels = torch.arange(n) % 10

    def images(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx).flatten().tolist()
        out = torch.empty(len(idx), 1, 28, 28)
        grid = torch.arange(28.0)
        for k, i in enumerate(idx):
            g = torch.Generator().manual_seed(int(i))
            stripes = 0.5 + 0.5 * torch.sin(grid[:, None] * (0.2 + 0.05 * (i % 10)) + grid[None, :] * 0.1)
            out[k, 0] = (0.7 * stripes + 0.3 * torch.rand(28, 28, generator=g)).clamp(0, 1)
        return out


def _model():
    torch.manual_seed(0)
    return build_model(ModelConfig(channels=(16, 64), fc=32), (1, 28, 28), 10)


def _cfg(n_vectors: int, passes: float = 1.0) -> SAEConfig:
    return SAEConfig(expansion=2, batch_size=4096, steps=max(2, round(passes * n_vectors / 4096)), checkpoints=1,
                     lr_warmup=0.0, init_sample=8192)


def _train(source, cfg: SAEConfig, out: Path) -> None:
    train_saes(source, [cfg], [out], progress=False, log_every=100, device="cpu")
    shutil.rmtree(out)


def throughput(quick: bool) -> list[str]:
    "CPU seconds of streaming vs cache training (median of alternating repeats)."
    n_images = 1000 if quick else 4000
    passes, repeats = 2, 2 if quick else 3
    model, images = _model(), GeneratedImages(n_images)
    n = n_images * PER_IMAGE
    cfg = _cfg(n, passes)
    tmp = Path(tempfile.mkdtemp())
    capture = CaptureConfig(layers=(LAYER,), dtype="float16")
    stream_cap = capture.replace(store="stream", buffer=n // 4)
    try:
        cache_activations(model, images, capture, tmp / "kept", progress=False, device="cpu", batch_size=256)
        kept = ActivationCache(tmp / "kept" / LAYER)

        def stream():
            _train(StreamingActivations(model, images, stream_cap, LAYER, device="cpu", batch_size=256), cfg, tmp / "s")

        def from_cache():
            _train(kept, cfg, tmp / "c")

        def capture_and_train():
            cache_activations(model, images, capture, tmp / "acts", progress=False, device="cpu", batch_size=256)
            _train(ActivationCache(tmp / "acts" / LAYER), cfg, tmp / "ct")
            shutil.rmtree(tmp / "acts")

        times = {f: [] for f in (stream, from_cache, capture_and_train)}
        stream(); from_cache()  # warm-up
        for _ in range(repeats):
            for fn, out in times.items():
                t0 = time.process_time(); fn(); out.append(time.process_time() - t0)
        med = {fn.__name__: sorted(t)[len(t) // 2] for fn, t in times.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s, c, ct = med["stream"], med["from_cache"], med["capture_and_train"]
    label = f"SAE {WIDTH}→{2 * WIDTH}, {cfg.steps} steps of 4096 = {passes} passes over {n_images} images × {PER_IMAGE} vectors"
    return ["| contender | CPU s (median) | images/CPU s | ratio to streaming |", "|---|---|---|---|",
            f"| streaming, buffer = ¼ pass ({label}) | {s:.2f} | {passes * n_images / s:,.0f} | 1 |",
            f"| training from an existing cache | {c:.2f} | {passes * n_images / c:,.0f} | {s / c:.2f}× faster |",
            f"| capture the cache, then train from it | {ct:.2f} | {passes * n_images / ct:,.0f} | {s / ct:.2f}× faster |"]


def _rss_child(store: str, n_images: int, buffer: int) -> None:
    "In a fresh process: train one pass over `n_images` (streamed, or from the vectors in memory); print the peak RSS."
    torch.set_num_threads(1)
    model, images = _model(), GeneratedImages(n_images)
    cap = CaptureConfig(layers=(LAYER,), store="stream", buffer=buffer)
    source = StreamingActivations(model, images, cap, LAYER, device="cpu", batch_size=256)
    if store == "memory":   # the control: every vector held, as a preloaded cache would be
        source = InMemoryVectors(torch.cat(list(source.batches(4096, shuffle=False))).half())
    tmp = Path(tempfile.mkdtemp())
    try:
        _train(source, _cfg(n_images * PER_IMAGE), tmp / "sae")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"maxrss_mib": _peak_rss_mib()}))


def _peak_rss_mib() -> float:
    """This process's peak resident set size: `VmHWM` (reset by exec, unlike `ru_maxrss`, which a child inherits
    from the parent it was forked from), else `ru_maxrss`."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(quick: bool) -> list[str]:
    "Peak RSS per (source, size), each in its own subprocess."
    base, buffer = (400, 2**14) if quick else (2000, 2**16)
    rows = ["| source | images | vectors | peak RSS (MiB) | 10× / 1× |", "|---|---|---|---|---|"]
    for store in ("stream", "memory"):
        rss = {}
        for n in (base, 10 * base):
            out = subprocess.run([sys.executable, "-m", "bench.streaming", "--rss-child", store, str(n), str(buffer)],
                                 capture_output=True, text=True, check=True).stdout
            rss[n] = json.loads(out.strip().splitlines()[-1])["maxrss_mib"]
        name = f"streamed, buffer {buffer:,} vectors" if store == "stream" else "vectors in memory (control)"
        for n in (base, 10 * base):
            ratio = f"{rss[n] / rss[base]:.3f}" if n != base else ""
            rows.append(f"| {name} | {n:,} | {n * PER_IMAGE:,} | {rss[n]:.0f} | {ratio} |")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (a smoke run)")
    p.add_argument("--memory-only", action="store_true", help="only the peak-memory table")
    p.add_argument("--throughput-only", action="store_true", help="only the throughput table")
    p.add_argument("--rss-child", nargs=3, metavar=("STORE", "IMAGES", "BUFFER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        store, n, buffer = args.rss_child
        return _rss_child(store, int(n), int(buffer))
    if not args.memory_only:
        print("throughput (CPU seconds, alternating repeats in one process):\n")
        print("\n".join(throughput(args.quick)))
    if not args.throughput_only:
        print("\npeak memory (one subprocess per row, one pass each):\n")
        print("\n".join(peak_memory(args.quick)))


if __name__ == "__main__":
    main()
