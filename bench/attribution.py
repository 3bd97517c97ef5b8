"""Attribution and circuits, each against its plain reference measured side by side:

- AtP for every node of every site (one traced forward + backward) vs a plain forward + backward of
  the model on the same batch (throughput ratio; goal ≥ 0.5);
- edges by batched vector–Jacobian products down to the upstream site's output, contracted with its
  decoder and Δu, vs one backward per downstream node down to its features and error (goal ≥ 3× on a CPU);
- a faithfulness curve with all thresholds evaluated together vs one evaluation per threshold.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import Row, compare
from sfc_vision.attribution import atp_batch, make_metric, node_effects
from sfc_vision.circuits import curve_thresholds, faithfulness, faithfulness_curve, select_nodes
from sfc_vision.data import TensorImageSet
from sfc_vision.edges import edge_effects
from sfc_vision.models import ModelConfig, build_model
from sfc_vision.sae import ReLUSAE
from sfc_vision.splice import Splice, mean_patches

CLASSES = [str(i) for i in range(10)]


def _setup(arch: str, shape: tuple[int, int, int], sites: dict[str, int], n_images: int, expansion: int = 4):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch), shape, 10).eval()
    images = TensorImageSet(torch.randint(0, 256, (n_images, *shape), dtype=torch.uint8),
                            torch.randint(0, 10, (n_images,)), CLASSES)
    splice = Splice(model, {s: ReLUSAE(d, expansion * d) for s, d in sites.items()})
    patches = mean_patches(splice, images, progress=False)
    return model, images, splice, patches


def _atp_rows(quick: bool) -> list[Row]:
    rows = []
    cases = [("cnn", (1, 28, 28), {"pool1": 16, "pool2": 32, "relu3": 128}, 256),
             ("resnet18_small", (3, 32, 32), {"layer1": 64, "layer2": 128, "layer3": 256}, 32)]
    for arch, shape, sites, batch in cases:
        model, images, splice, patches = _setup(arch, shape, sites, batch)
        ce = make_metric("ce", CLASSES)
        x, y = images.images(torch.arange(batch)), images.labels

        def plain():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()

        rows.append(compare(f"AtP, all nodes of {len(sites)} sites: {arch} (batch {batch}) vs plain forward+backward",
                            lambda: atp_batch(splice, x, y, ce, patches), plain, goal=0.5, ratio_kind="speed",
                            repeats=3 if quick else 9,
                            note="ratio = throughput of AtP / throughput of a plain training step"))
        model.zero_grad(set_to_none=True)
    return rows


def _edges_per_position(splice, images, metric, patches, up, down, nodes_down):
    """The reference of Marks et al.'s code: one backward per downstream node *and position*
    (all examples in one seed); returns `(len(nodes_down), n_nodes(up))` weights summed over the batch."""
    x, y = images.images(torch.arange(len(images))), images.labels
    with torch.enable_grad(), splice.trace() as tr:  # ḡ: the total gradient at the downstream site, as edges use
        m = metric(splice.model(x), y)
        g_f, g_eps = torch.autograd.grad(m.sum(), [tr[down].f, tr[down].eps])
    with torch.enable_grad(), splice.trace(graph=True) as tr:  # site-to-site derivatives: direct effects
        splice.model(x)
        tu, td = tr[up], tr[down]
        du_f, du_e = patches[up].f - tu.f_clean, patches[up].eps - tu.eps_clean
        rows = []
        for j in nodes_down.tolist():
            output, g = (td.f_graph, g_f) if j < g_f.shape[-1] else (td.eps_graph, g_eps)
            row = 0
            for q in range(g.shape[1]):
                seed = torch.zeros_like(g)
                if j < g_f.shape[-1]:
                    seed[:, q, j] = g[:, q, j]
                else:
                    seed[:, q] = g[:, q]
                gu_f, gu_e = torch.autograd.grad(output, [tu.f, tu.eps], seed, retain_graph=True)
                row = row + torch.cat([(gu_f * du_f).sum((0, 1)), (gu_e * du_e).sum()[None]])
            rows.append(row)
    return torch.stack(rows)


def _edge_rows(quick: bool) -> list[Row]:
    model, images, splice, patches = _setup("cnn", (1, 28, 28), {"pool1": 16, "pool2": 32, "relu3": 128}, 32)
    ce = make_metric("ce", CLASSES)
    effects = node_effects(splice, images, ce, patches, progress=False)
    rows = []
    for label, nodes in (("all nodes", None), ("a circuit of the top 32 nodes per site", select_nodes(effects.mean, top_k=32))):
        kw = dict(nodes=nodes, batch_size=32, progress=False)
        rows.append(compare(f"edges pool1→pool2→relu3, {label} (32 images): batched VJPs vs one backward per node",
                            lambda: edge_effects(splice, images, ce, patches, **kw),
                            lambda: edge_effects(splice, images, ce, patches, vjp="loop", **kw),
                            goal=3, ratio_kind="speed", repeats=2 if quick else 5, warmup=1))
    down = torch.tensor([0, 1, 2, 3, 128])  # four features and the error node of pool2
    ours = edge_effects(splice, images, ce, patches, nodes={"pool2": down}, pairs=[("pool1", "pool2")], progress=False)
    ref = _edges_per_position(splice, images, ce, patches, "pool1", "pool2", down) / len(images)
    torch.testing.assert_close(ours["pool1", "pool2"], ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    rows.append(compare("edges pool1→pool2 into 5 nodes (32 images): batched, positions reduced at once vs one "
                        "backward per node and position (Marks et al.'s loop)",
                        lambda: edge_effects(splice, images, ce, patches, nodes={"pool2": down}, pairs=[("pool1", "pool2")],
                                             progress=False),
                        lambda: _edges_per_position(splice, images, ce, patches, "pool1", "pool2", down),
                        goal=10, ratio_kind="speed", repeats=2 if quick else 3, warmup=1))
    return rows


def _curve_rows(quick: bool) -> list[Row]:
    model, images, splice, patches = _setup("cnn", (1, 28, 28), {"pool1": 16, "pool2": 32, "relu3": 128}, 200)
    ce = make_metric("ce", CLASSES)
    ie = node_effects(splice, images, ce, patches, progress=False).mean
    thresholds = curve_thresholds(ie, 12)

    def together():
        return faithfulness_curve(splice, ie, images, ce, patches, thresholds=thresholds, n_random=0, progress=False)

    def one_by_one():
        return [faithfulness(splice, images, ce, patches, [select_nodes(ie, float(t))], progress=False) for t in thresholds]

    return [compare(f"faithfulness curve, {len(thresholds)} thresholds (200 images): together vs one pass per threshold",
                    together, one_by_one, goal=1.5, ratio_kind="speed", repeats=2 if quick else 5, warmup=1)]


def run(quick: bool = False) -> list[Row]:
    return _atp_rows(quick) + _edge_rows(quick) + _curve_rows(quick)
