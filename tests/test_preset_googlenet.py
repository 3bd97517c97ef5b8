"""The GoogLeNet preset (`configs/imagenet_googlenet.yaml`: the nine mixed layers, the flamingo circuit) end to end on
generated ImageNet-layout JPEGs; see `presets.py`."""
import pytest
import torch
from presets import (CONFIGS, FLAMINGO_TRAIN, FLAMINGO_VAL, GOOGLENET_ALIASES, GOOGLENET_SET, MIXED, N_VAL, RunOutputs,
                     Study, check_complete, imagenet_folder, load_config, pretrained_path, random_googlenet_state, run_preset)


@pytest.mark.slow
def test_googlenet_preset_nine_mixed_layers_flamingo_circuit(tmp_path):
    data = imagenet_folder(tmp_path / "imagenet")
    torch_home = tmp_path / "torch"  # torchvision's cache, where the preset's `weights: default` looks
    weights = torch_home / "hub" / "checkpoints" / pretrained_path("googlenet").name
    weights.parent.mkdir(parents=True)
    torch.save(random_googlenet_state(data), weights)

    settings = [f"data.root={data}", *GOOGLENET_SET]
    cfg, folder, m = run_preset("imagenet_googlenet.yaml", settings, tmp_path / "runs", env={"TORCH_HOME": str(torch_home)})
    assert cfg.model.weights == "default" and list(cfg.capture.layers) == MIXED
    check_complete(folder, m, MIXED, N_VAL)
    assert not m["model"]["trained"] and m["model"]["n_parameters"] > 6_000_000  # the pretrained path, 1000 classes
    assert m["model"]["accuracy"] > 0.5  # the class read-out in the weights file, through the preset's loading and scaling
    for layer in MIXED:  # positions sampled: 4 vectors per training image
        assert m["activations"][layer]["n_vectors"] == 4 * m["activations"][layer]["n_images"]

    # the flamingo circuit: found on the flamingo training images only, checked on the flamingo validation images
    assert load_config(CONFIGS / "imagenet_googlenet.yaml").circuit.target_class == "flamingo"
    assert "flamingo" in cfg.circuit.target_class
    assert m["attribution"]["target_class"] == cfg.circuit.target_class
    assert m["attribution"]["n_images"] == FLAMINGO_TRAIN and m["circuit"]["n_eval"] == FLAMINGO_VAL
    c = m["circuit"]
    assert list(c["nodes_per_layer"]) == MIXED and c["nodes"] == 2 * len(MIXED)

    circuit = RunOutputs(Study(cfg, tmp_path / "runs", progress=False)).circuit()
    sites = [GOOGLENET_ALIASES[layer] for layer in MIXED]
    assert circuit.sites == sites and circuit.meta["target_class"] == cfg.circuit.target_class
    assert circuit.meta["n_images"] == circuit.meta["n_edge_images"] == FLAMINGO_TRAIN
    assert set(circuit.edges) == set(zip(sites, sites[1:]))  # edges between consecutive mixed layers, all eight pairs
    assert c["edges"] == sum(int((w != 0).sum()) for w in circuit.edges.values()) > 0
