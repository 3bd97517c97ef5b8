"""ViT-B/16 at 224 px on the CPU (random weights): capture, AtP and edges per image, at the three sites of block 6.

Each row is a ratio measured side by side (ours and a plain-PyTorch reference alternating, `bench.harness.compare`);
each row's note gives the CPU seconds per image of ours (`time.process_time`, all threads, one call after warm-up),
which do not depend on how loaded the machine is the way wall-clock seconds do.

    python -m bench --only vit            # or: python -m bench.vit [--quick]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bench.harness import Row, compare, machine, table
from sfc_vision.activations import read_layers, to_vectors, vector_width
from sfc_vision.attribution import atp_batch, make_metric, node_effects
from sfc_vision.circuits import select_nodes
from sfc_vision.data import TensorImageSet
from sfc_vision.edges import edge_effects, edge_pairs
from sfc_vision.models import ModelConfig, build_model
from sfc_vision.sae import ReLUSAE
from sfc_vision.splice import Splice, mean_patches

SITES = ("attn_6", "mlp_6", "resid_6")
EXPANSION = 4   # 768 → 3072 features per site


def _cpu_per_image(fn, n: int) -> float:
    "CPU seconds (all threads) of one call of `fn`, per image."
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) / n


def run(quick: bool = False) -> list[Row]:
    torch.manual_seed(0)
    n, classes, repeats = 2, 10, 2 if quick else 3
    model = build_model(ModelConfig(arch="vit_b_16", num_classes=classes), (3, 224, 224), classes).eval()
    torch.nn.init.normal_(model.net.heads.head.weight, std=0.05)  # torchvision starts the head at zero: no gradient
    sites = [model.resolve(s) for s in SITES]
    x = torch.rand(n, 3, 224, 224)
    y = torch.randint(0, classes, (n,))
    images = TensorImageSet((x * 255).round().to(torch.uint8), y, [str(i) for i in range(classes)])
    x = next(images.batches(n))[0]
    with torch.no_grad(), read_layers(model, sites) as acts:
        model(x[:1])
    sp = Splice(model, {s: ReLUSAE(vector_width(a.shape), EXPANSION * vector_width(a.shape)) for s, a in acts.items()})
    patches = mean_patches(sp, images, progress=False)
    ce = make_metric("ce", images.class_names)
    rows = []

    def plain():
        with torch.inference_mode():
            model(x)

    def capture():  # what the activation cache does per batch: a forward reading the sites, the token vectors copied out
        with torch.inference_mode(), read_layers(model, sites) as a:
            model(x)
            [to_vectors(a[s]).half() for s in sites]

    cpu = _cpu_per_image(capture, n)
    rows.append(compare(f"vit_b_16 (224 px, 197 tokens): capture of {', '.join(SITES)} vs plain forward (batch {n})",
                        capture, plain, goal=1.05, repeats=repeats, warmup=1, note=f"ours {cpu:.2f} CPU s/image"))

    def plain_step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def atp():
        atp_batch(sp, x, y, ce, patches)

    cpu = _cpu_per_image(atp, n)
    rows.append(compare(f"vit_b_16: AtP over all {3 * (EXPANSION * 768 + 1)} nodes of {', '.join(SITES)} "
                        f"(expansion {EXPANSION}, every token) vs plain forward+backward (batch {n})", atp, plain_step,
                        goal=0.5, ratio_kind="speed", repeats=repeats, warmup=1, note=f"ours {cpu:.2f} CPU s/image"))
    model.zero_grad(set_to_none=True)

    ie = node_effects(sp, images, ce, patches, error_method="same", batch_size=n, progress=False)
    nodes = select_nodes(ie.mean, top_k=8)
    kw = dict(nodes=nodes, batch_size=n, progress=False)
    run_edges = lambda vjp: edge_effects(sp, images, ce, patches, vjp=vjp, **kw)
    cpu = _cpu_per_image(lambda: run_edges("batched"), n)
    rows.append(compare(f"vit_b_16: edges among the top 8 nodes per site, {len(edge_pairs(sp))} pairs of block 6 "
                        f"({n} images): batched VJPs vs one backward per node", lambda: run_edges("batched"),
                        lambda: run_edges("loop"), goal=1.5, ratio_kind="speed", repeats=max(1, repeats - 1), warmup=1,
                        note=f"ours {cpu:.2f} CPU s/image"))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    args = p.parse_args()
    t0 = time.perf_counter()
    rows = run(args.quick)
    print(f"{time.strftime('%Y-%m-%d')}, machine: {machine()}\n")
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
