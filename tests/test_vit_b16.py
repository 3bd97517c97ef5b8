"""torchvision's ViT-B/16 end to end on the CPU: a randomly initialised ViT-B/16 saved as the local weights file the
`weights:` setting reads (nothing downloaded), the generated `shapes` images at 32 px (2 × 2 patches and the class
token), SAEs on the attention output, the MLP output and the residual stream of the last block, through the circuit
stage: with summed nodes, then with class-token nodes (the stages upstream of attribution come from the cache).
Sizes are tiny (a few images, short SAE training) so that it costs well under a minute of CPU time; what is
checked is exact whatever the sizes: the spliced model is the model (F of every node is 1, of none 0), the node
layouts, the edges of a block, and that the run records its aggregation."""
import pytest
import torch

from sfc_vision.attribution import NodeLayout
from sfc_vision.stages import RunOutputs, Study
from sfc_vision.study_config import StudyConfig

BLOCK = 11
SITES = [f"attn_{BLOCK}", f"mlp_{BLOCK}", f"resid_{BLOCK}"]
SIZE, TOKENS, WIDTH = 32, 5, 768   # 32 px in 16 px patches: 4 patch tokens and the class token


def random_vit_b16(path, num_classes: int):
    "A random torchvision ViT-B/16 for `SIZE` px images as a bare state dict (torchvision's format), its head random."
    from torchvision.models import vit_b_16
    torch.manual_seed(0)
    net = vit_b_16(weights=None, image_size=SIZE, num_classes=num_classes)
    torch.nn.init.normal_(net.heads.head.weight, std=0.5)  # torchvision starts the head at zero: no gradient would flow
    torch.save(net.state_dict(), path)
    return path


def config(weights, **attribution) -> StudyConfig:
    return StudyConfig.from_dict({
        "run": {"name": "vit_b16", "stages": ["circuit"]},
        "data": {"name": "shapes", "shapes_n": 48, "shapes_size": SIZE, "limit_train": 24, "limit_test": 16},
        "model": {"arch": "vit_b_16", "weights": str(weights), "num_classes": 4},
        "capture": {"layers": SITES},
        "sae": {"expansion": 1, "steps": 10, "batch_size": 32, "lr_warmup": 0.0, "checkpoints": 1, "init_sample": 100},
        "evaluation": {"n_images": 8},
        "attribution": {"n_images": 8, "n_reference": 8, "error_method": "same", **attribution},
        "circuit": {"select": "top_k", "top_k": 2, "n_eval": 8, "curve_points": 2, "n_random": 1, "n_edge_images": 4},
        "execution": {"device": "cpu", "batch_size": 8, "grad_batch_size": 8}})


def test_vit_b16_random_weights_through_the_circuit(tmp_path):
    weights = random_vit_b16(tmp_path / "vit_b_16_random.pth", 4)
    runs = tmp_path / "runs"
    study = Study(config(weights), runs, progress=False)
    rec = {name: study.ensure(name)["summary"] for name in ("model", "activations", "circuit")}
    out = RunOutputs(study)
    model, _ = out.model()
    assert not rec["model"]["trained"] and rec["model"]["n_parameters"] > 85_000_000  # ViT-B/16, loaded, not trained
    for layer in SITES:
        assert rec["activations"][layer]["n_vectors"] == TOKENS * rec["activations"][layer]["n_images"]  # every token
    splice, _ = out.splice("cpu")
    splice.probe(torch.rand(1, 3, SIZE, SIZE))
    sites = [model.resolve(s) for s in SITES]
    assert splice.order == sites and [splice.positions(s) for s in sites] == [TOKENS] * 3
    c = rec["circuit"]
    # the curve ends with every node: the spliced ViT-B/16 is the model (F = 1, completeness 0)
    for kind in ("sae", "neurons"):
        assert c["curves"][kind]["faithfulness"][-1] == pytest.approx(1.0, abs=1e-3)
        assert c["curves"][kind]["completeness"][-1] == pytest.approx(0.0, abs=1e-3)
    assert c["m_full"] != pytest.approx(c["m_empty"], abs=1e-3)
    assert list(c["nodes_per_layer"].values()) == [2, 2, 2]
    circuit = out.circuit()
    assert circuit.aggregation == "sum" and set(circuit.edges) == {(sites[0], sites[1]), (sites[0], sites[2]), (sites[1], sites[2])}
    assert all(circuit.n_nodes[s] == WIDTH + 1 for s in sites)
    assert any(w.abs().max() > 0 for w in circuit.edges.values())

    # class-token nodes: only attribution and circuit are computed again; their identities hold too
    cls = Study(config(weights, aggregation="cls"), runs, progress=False)
    for name in ("model", "activations", "saes", "sae_eval"):
        assert cls.key(name) == study.key(name)
    assert cls.key("attribution") != study.key("attribution")
    c_cls = cls.ensure("circuit")["summary"]
    assert cls.ensure("attribution")["summary"]["aggregation"] == "cls"
    assert c_cls["curves"]["sae"]["faithfulness"][-1] == pytest.approx(1.0, abs=1e-3)
    circuit_cls = RunOutputs(cls).circuit()
    assert circuit_cls.aggregation == "cls"
    assert circuit_cls.layout(sites[2]) == NodeLayout("cls", TOKENS, WIDTH + 1, 0)
    assert RunOutputs(cls).effects("sae").layout(sites[0]).aggregation == "cls"
