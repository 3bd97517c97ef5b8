"""The GPU benchmark: ResNet-18, GoogLeNet and ViT-B/16 (random weights) on synthetic 224×224 images, bf16 autocast.

Runs on one GPU with nothing beyond PyTorch and torchvision installed (PYTHONPATH=. is enough; safetensors,
numpy, tqdm, pyyaml are imported by the package and ship with those images), in under 5 minutes on an H100:

    PYTHONPATH=. python -m bench.gpu            # on the GPU machine
    PYTHONPATH=. python -m bench.gpu --tiny     # a CPU smoke run (64×64 images, few repeats)

For each model and its two sites (resnet18: layer3, layer4; googlenet: mixed4c, mixed5a; vit_b_16: the residual
stream after blocks 5 and 6, 197 tokens each), SAEs of
expansion 8, it prints ratios to plain-PyTorch references measured in the same run (as `python -m bench`)
and the absolute throughputs: images/s for forward, forward+backward, hooked forward, caching and
AtP; vectors/s for SAE training; for GoogLeNet also images/s of streaming SAE training at every position of
mixed3a (`capture.store: stream`: the model runs every pass, no cache) against capturing a cache and training from it.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.harness import Row, compare, machine, table
from bench.sae_training import _minimal_loop
from sfc_vision.activations import (ActivationCache, CaptureConfig, StreamingActivations, cache_activations,
                                    read_layers, to_vectors, vector_width)
from sfc_vision.attribution import atp_batch, make_metric, node_effects
from sfc_vision.circuits import curve_thresholds, faithfulness, faithfulness_curve, select_nodes
from sfc_vision.data import TensorImageSet
from sfc_vision.edges import edge_effects
from sfc_vision.models import ModelConfig, build_model
from sfc_vision.sae import ReLUSAE, SAEConfig
from sfc_vision.sae_train import InMemoryVectors, train_saes
from sfc_vision.splice import Splice, mean_patches

MODELS = {"resnet18": ("layer3", "layer4"), "googlenet": ("mixed4c", "mixed5a"), "vit_b_16": ("resid_5", "resid_6")}


def _sizes(tiny: bool) -> dict:
    "Batch sizes and counts: the H100 run, or a CPU smoke run."
    if tiny:
        return dict(side=64, fwd=16, atp=4, edges=2, curve=8, cache=64, sae_images=1024, sae_epochs=1,
                    repeats=2, classes=10)
    return dict(side=224, fwd=256, atp=128, edges=8, curve=512, cache=4096, sae_images=8192, sae_epochs=2,
                repeats=7, classes=1000)


class Bench:
    "One model with SAEs at its two sites, on `device`, and its timings."

    def __init__(self, arch: str, device: torch.device, s: dict):
        self.arch, self.device, self.s = arch, device, s
        torch.manual_seed(0)
        shape = (3, s["side"], s["side"])
        self.model = build_model(ModelConfig(arch=arch, num_classes=s["classes"]), shape, s["classes"]).to(device).eval()
        self.model = self.model.to(memory_format=torch.channels_last)
        self.sites = tuple(self.model.resolve(site) for site in MODELS[arch])  # googlenet: mixed4c is inception4c
        self.x = torch.rand(s["fwd"], *shape, device=device)
        self.y = torch.randint(0, s["classes"], (s["fwd"],), device=device)
        with torch.inference_mode(), read_layers(self.model, list(self.sites)) as acts:
            self.model(self.x[:1])
            self.d = {site: vector_width(a.shape) for site, a in acts.items()}  # channels, or a token's width
        self.prec = "bf16" if device.type == "cuda" else "fp32"
        self.rows: list[Row] = []
        self.throughput: list[str] = []

    def amp(self):
        "bf16 autocast on the GPU; float32 on the CPU (the smoke run), where bf16 matmuls are slow."
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _rate(self, what: str, row: Row, n: int, unit: str = "images/s", ref: str = "reference") -> None:
        self.rows.append(row)
        self.throughput.append(f"{self.arch} {what}: ours {n / row.ours_s:,.0f} {unit}, {ref} {n / row.ref_s:,.0f} {unit}")

    def forward(self) -> None:
        "Hook overhead, and the plain forward's throughput."
        x, model, r = self.x, self.model, self.s["repeats"]

        def plain():
            with torch.inference_mode(), self.amp():
                model(x)

        def hooked():
            with torch.inference_mode(), self.amp(), read_layers(model, list(self.sites)):
                model(x)

        self._rate(f"forward ({self.prec})", compare(f"{self.arch}: hooked forward reading {', '.join(self.sites)} vs plain forward "
                                             f"(batch {len(x)})", hooked, plain, goal=1.05, repeats=r), len(x),
                   ref="plain forward")

    def attribution(self) -> None:
        "AtP over every feature and error node of both sites vs a plain forward+backward (bf16 on the GPU)."
        s, model = self.s, self.model
        ce = make_metric("ce", [str(i) for i in range(s["classes"])])
        self.splice = Splice(model, {site: ReLUSAE(d, 8 * d).to(self.device) for site, d in self.d.items()})
        self.images = TensorImageSet(torch.randint(0, 256, (max(s["curve"], s["atp"]), 3, s["side"], s["side"]),
                                                   dtype=torch.uint8),
                                     torch.randint(0, s["classes"], (max(s["curve"], s["atp"]),)),
                                     [str(i) for i in range(s["classes"])])
        with self.amp():
            self.patches = mean_patches(self.splice, self.images, batch_size=s["atp"], progress=False)
        x, y = self.x[:s["atp"]], self.y[:s["atp"]]

        def plain_step():
            model.zero_grad(set_to_none=True)
            with self.amp():
                loss = F.cross_entropy(model(x), y)
            loss.backward()

        def atp():
            with self.amp():
                atp_batch(self.splice, x, y, ce, self.patches)

        self._rate(f"AtP, {sum(self.splice.n_nodes(t) for t in self.sites)} nodes ({self.prec})",
                   compare(f"{self.arch}: AtP over all nodes of {', '.join(self.sites)} (expansion 8) vs plain "
                           f"forward+backward (batch {len(x)})", atp, plain_step, goal=0.5,
                           ratio_kind="speed", repeats=self.s["repeats"]), len(x), ref="plain forward+backward")
        model.zero_grad(set_to_none=True)
        self.metric = ce

    def edges(self) -> None:
        "Edges between the two sites into the top 32 downstream nodes: batched VJPs vs one backward per node."
        s = self.s
        imgs = TensorImageSet(self.images.images_u8[:s["edges"]], self.images.labels[:s["edges"]], self.images.class_names)
        with self.amp():
            ie = node_effects(self.splice, imgs, self.metric, self.patches, batch_size=s["edges"], progress=False)
        nodes = select_nodes(ie.mean, top_k=32)
        kw = dict(nodes=nodes, pairs=[self.sites], batch_size=s["edges"], progress=False)

        def run(vjp):
            with self.amp():
                edge_effects(self.splice, imgs, self.metric, self.patches, vjp=vjp, **kw)

        self.rows.append(compare(f"{self.arch}: edges {self.sites[0]}→{self.sites[1]} into 32 nodes ({s['edges']} images): "
                                 "batched VJPs vs one backward per node", lambda: run("batched"), lambda: run("loop"),
                                 goal=10, ratio_kind="speed", repeats=3, warmup=1))

    def curve(self) -> None:
        "A faithfulness curve of 8 thresholds: all together vs one pass per threshold."
        s = self.s
        with self.amp():
            ie = node_effects(self.splice, self.images, self.metric, self.patches, batch_size=s["atp"], progress=False).mean
        thresholds = curve_thresholds(ie, 8)

        def together():
            with self.amp():
                faithfulness_curve(self.splice, ie, self.images, self.metric, self.patches, thresholds=thresholds,
                                   n_random=0, progress=False)

        def one_by_one():
            with self.amp():
                for t in thresholds:
                    faithfulness(self.splice, self.images, self.metric, self.patches, [select_nodes(ie, float(t))],
                                 progress=False)

        self.rows.append(compare(f"{self.arch}: faithfulness curve, 8 thresholds ({len(self.images)} images): together "
                                 "vs one pass per threshold", together, one_by_one, goal=1.5, ratio_kind="speed",
                                 repeats=3, warmup=1))

    def caching(self, tmp: Path) -> None:
        "The activation cache of both sites (fp16 shards on local disk) vs a plain float32 forward over the same images."
        s, model = self.s, self.model
        images = TensorImageSet(torch.randint(0, 256, (s["cache"], 3, s["side"], s["side"]), dtype=torch.uint8),
                                torch.zeros(s["cache"], dtype=torch.long), [str(i) for i in range(s["classes"])])
        cfg = CaptureConfig(layers=self.sites)

        def ours():  # float32 forward: the cache has no autocast option, so the reference has none either
            cache_activations(model, images, cfg, tmp / "cache", progress=False, device=str(self.device), batch_size=s["fwd"])
            shutil.rmtree(tmp / "cache")

        def forward():
            with torch.inference_mode():
                for x, _, _ in images.batches(s["fwd"], shuffle=True, seed=0):
                    model(x.to(self.device))

        self._rate("activation caching (float32 forward, fp16 to disk)",
                   compare(f"{self.arch}: caching {', '.join(self.sites)} of {s['cache']} images vs plain forward over "
                           "them (host images → device)", ours, forward, goal=0.8, ratio_kind="speed", repeats=3,
                           warmup=1), s["cache"], ref="plain forward")

    def sae_training(self, tmp: Path) -> None:
        "Our trainer vs the minimal loop (bf16 autocast on the GPU) on each site's vectors, kept on the device."
        s = self.s
        for site in self.sites:
            chunks = []
            with torch.inference_mode(), self.amp(), read_layers(self.model, [site]) as acts:
                for start in range(0, s["sae_images"], s["fwd"]):
                    self.model(torch.rand(s["fwd"], 3, s["side"], s["side"], device=self.device))
                    chunks.append(to_vectors(acts[site]).float())
            x = torch.cat(chunks)
            del chunks
            # Random-weight GoogLeNet's activations shrink below float16's range: rescale (SAE training
            # normalises by one scalar anyway), then store as a cache would, in float16.
            x *= math.sqrt(x.shape[1] / x.pow(2).sum(1).mean().clamp_min(1e-30))
            vectors = InMemoryVectors(x.to(torch.float16))
            del x
            n, d = vectors.n_vectors, vectors.d
            cfg = SAEConfig(expansion=8, batch_size=4096, steps=max(2, s["sae_epochs"] * n // 4096), checkpoints=1,
                            precision="bfloat16" if self.device.type == "cuda" else "float32",
                            lr_warmup=0.05, init_sample=min(65536, n))
            runs = iter(range(10**6))

            def ours():
                out = tmp / f"sae_{next(runs)}"
                train_saes(vectors, [cfg], [out], progress=False, log_every=100, device=str(self.device))
                shutil.rmtree(out)

            class Cache:  # the minimal loop's view of the same vectors
                n_vectors, d = n, vectors.d
                load_all = staticmethod(lambda device, dtype: vectors.vectors.to(device, dtype))

            def minimal():
                with self.amp():
                    _minimal_loop(Cache, cfg, self.device)

            self._rate(f"SAE training at {site} ({d}→{8 * d}, {self.prec})",
                       compare(f"{self.arch}: SAE training at {site} ({d}→{8 * d}, {s['sae_epochs']} epochs of {n} "
                               "vectors) vs minimal loop", ours, minimal, goal=0.9, ratio_kind="speed", repeats=3,
                               warmup=1), n * s["sae_epochs"], "vectors/s", ref="minimal loop")
            del vectors

    def streaming(self, tmp: Path) -> None:
        """GoogLeNet: SAE training at every position of mixed3a streamed from the model (a buffer of a quarter pass,
        float32 forward, bf16 buffer) vs capturing the same vectors to a cache and training from it; one pass each."""
        s, model = self.s, self.model
        n_img = s["cache"]
        images = TensorImageSet(torch.randint(0, 256, (n_img, 3, s["side"], s["side"]), dtype=torch.uint8),
                                torch.zeros(n_img, dtype=torch.long), [str(i) for i in range(s["classes"])])
        site = model.resolve("mixed3a")
        cap = CaptureConfig(layers=(site,), dtype="bfloat16")  # bf16: random GoogLeNet's activations underflow float16
        probe = StreamingActivations(model, images, cap.replace(store="stream"), site, device=self.device,
                                     batch_size=s["fwd"])
        n, d = probe.n_vectors, probe.d
        stream_cap = cap.replace(store="stream", buffer=max(4096, n // 4))
        cfg = SAEConfig(expansion=8, batch_size=4096, steps=max(2, n // 4096), checkpoints=1, lr_warmup=0.05,
                        precision="bfloat16" if self.device.type == "cuda" else "float32", init_sample=min(65536, n))
        runs = iter(range(10**6))

        def ours():
            out = tmp / f"stream_{next(runs)}"
            source = StreamingActivations(model, images, stream_cap, site, device=self.device, batch_size=s["fwd"])
            train_saes(source, [cfg], [out], progress=False, log_every=100, device=str(self.device))
            shutil.rmtree(out)

        def cached():
            out = tmp / f"cached_{next(runs)}"
            cache_activations(model, images, cap, tmp / "cache3a", progress=False, device=str(self.device), batch_size=s["fwd"])
            train_saes(ActivationCache(tmp / "cache3a" / site), [cfg], [out], progress=False, log_every=100,
                       device=str(self.device))
            shutil.rmtree(out)
            shutil.rmtree(tmp / "cache3a")

        self._rate(f"streaming SAE training at mixed3a, every position ({d}→{8 * d}, {n_img} images × {n // n_img} "
                   f"positions, one pass)",
                   compare(f"{self.arch}: streaming SAE training at mixed3a, every position, one pass over {n_img} images "
                           f"({n} vectors, buffer {stream_cap.buffer}) vs capture + training from the cache", ours, cached,
                           goal=0.8, ratio_kind="speed", repeats=3, warmup=1), n_img, ref="capture + cache training")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a CPU smoke run with small images and few repeats")
    p.add_argument("--models", nargs="*", choices=sorted(MODELS), default=list(MODELS))
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("bench.gpu: no CUDA device; this benchmark is for a GPU (use --tiny for a CPU smoke run)")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    s = _sizes(args.tiny)
    t0 = time.perf_counter()
    rows, rates = [], []
    tmp = Path(tempfile.mkdtemp())
    try:
        for arch in args.models:
            b = Bench(arch, device, s)
            stages = [b.forward, b.attribution, b.edges, b.curve, lambda: b.caching(tmp), lambda: b.sae_training(tmp)]
            if arch == "googlenet":
                stages.append(lambda: b.streaming(tmp))
            for stage in stages:
                stage()
                print(f"[{time.perf_counter() - t0:6.1f} s] {arch}: {b.rows[-1].name}", flush=True)
            rows += b.rows
            rates += b.throughput
            del b
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, machine: {machine()}\n")
    print(table(rows))
    print("\nthroughputs:\n" + "\n".join(f"- {r}" for r in rates))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
