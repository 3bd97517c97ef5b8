"""The thesis's scale and sites at tiny sizes, on the CPU: a GoogLeNet (random weights, generated images) trains a
streaming SAE at every position of mixed3a with no activation cache; ResNet-18's thesis sites inside residual blocks
(`layer1.0.conv1`, `layer3.0.conv2`) run through the study end to end."""
import torch
from safetensors.torch import save_file

from sfc_vision.data import SHAPES
from sfc_vision.stages import RunOutputs, Study
from sfc_vision.study_config import StudyConfig


def test_googlenet_streams_an_sae_at_every_position_of_mixed3a(tmp_path):
    from torchvision.models import googlenet
    torch.manual_seed(0)
    net = googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=len(SHAPES))
    save_file(net.state_dict(), str(tmp_path / "googlenet.safetensors"))  # torchvision's format: the bare network
    cfg = StudyConfig.from_dict({
        "run": {"name": "stream"},
        "data": {"name": "shapes", "shapes_n": 40, "shapes_size": 64},        # 32 training images of 64 × 64 pixels
        "model": {"arch": "googlenet", "weights": str(tmp_path / "googlenet.safetensors")},
        "capture": {"layers": ["mixed3a"], "store": "stream", "buffer": 1024},  # half a pass: a real shuffle buffer
        "sae": {"expansion": 1, "steps": 24, "batch_size": 256, "checkpoints": 2, "lr_warmup": 0.0, "init_sample": 512},
        "execution": {"device": "cpu", "batch_size": 8}})
    study = Study(cfg, tmp_path / "runs", progress=False)
    study.ensure("saes")
    acts, sae = study.records["activations"]["summary"]["mixed3a"], study.records["saes"]["summary"]["mixed3a"]
    assert acts == {"shape": [256, 8, 8], "n_vectors": 32 * 64, "n_images": 32, "dtype": "float16", "store": "stream"}
    assert not [p for p in (tmp_path / "runs").rglob("shard_*")]           # no activation cache anywhere
    assert (sae["d_in"], sae["steps"], sae["passes"], sae["checkpoint_steps"]) == (256, 24, 3.0, [12, 24])
    assert sae["history"][-1]["loss"] < sae["history"][0]["loss"]
    _, meta = RunOutputs(study).sae("mixed3a")
    assert (meta["layer"], meta["capture"]["store"], meta["n_vectors"]) == ("inception3a", "stream", 2048)
    assert meta["model_sha256"] == study.records["model"]["summary"]["sha256"]


def test_resnet18_thesis_sites_inside_residual_blocks_end_to_end(tmp_path):
    "`layer1.0.conv1` and `layer3.0.conv2` (each inside a residual block, two stages apart) through capture, SAEs, attribution, edges and the circuit."
    from sfc_vision.models import ModelConfig, build_model
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet18_small"), (3, 16, 16), len(SHAPES))
    save_file(model.state_dict(), str(tmp_path / "resnet.safetensors"))
    sites = ["layer1.0.conv1", "layer3.0.conv2"]
    cfg = StudyConfig.from_dict({
        "run": {"name": "resnet_sites"},
        "data": {"name": "shapes", "shapes_n": 40, "shapes_size": 16},
        "model": {"arch": "resnet18_small", "weights": str(tmp_path / "resnet.safetensors")},
        "capture": {"layers": sites, "positions_per_image": 4},
        "sae": {"expansion": 1, "steps": 20, "batch_size": 64, "checkpoints": 2, "lr_warmup": 0.0, "init_sample": 128},
        "evaluation": {"n_images": 8},
        "attribution": {"n_images": 8, "n_reference": 8, "ig_max_steps": 20},
        "circuit": {"select": "top_k", "top_k": 2, "n_eval": 8, "curve_points": 3, "n_random": 1, "n_edge_images": 8},
        "execution": {"device": "cpu", "batch_size": 16, "grad_batch_size": 8}})
    study = Study(cfg, tmp_path / "runs", progress=False)
    study.ensure("circuit")
    out = RunOutputs(study)
    circuit, effects = out.circuit(), out.effects()
    assert circuit.sites == sites                                          # computation order, by dotted path
    widths = {"layer1.0.conv1": 64, "layer3.0.conv2": 256}
    for site in sites:
        assert circuit.n_nodes[site] == widths[site] + 1                   # d_sae (expansion 1) + the error node
        assert len(circuit.nodes[site]) == 2
        ie = effects.mean[site]
        # the circuit keeps each site's nodes of largest |IE|, with their signed effects
        assert torch.equal(circuit.nodes[site], ie.abs().argsort(descending=True, stable=True)[:2])
        assert torch.equal(circuit.node_ie[site], ie[circuit.nodes[site]])
    w = circuit.edges[("layer1.0.conv1", "layer3.0.conv2")]
    assert w.shape == (2, 2) and torch.isfinite(w).all() and w.abs().max() > 0
    saes = study.records["saes"]["summary"]
    assert [saes[s]["d_in"] for s in sites] == [64, 256]
