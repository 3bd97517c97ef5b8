"""Cross-module properties of attribution and circuits: checkpoints → spliced SAEs → circuit → saved → checked."""
import pytest
import torch

from sfc_vision.attribution import Splice, load_splice, make_metric, mean_patches, node_effects
from sfc_vision.circuits import Circuit, faithfulness, find_circuit
from sfc_vision.data import DataConfig, load_data
from sfc_vision.models import ModelConfig, build_model, load_model, save_model
from sfc_vision.sae import SAEConfig, build_sae, save_sae
from sfc_vision.train import TrainConfig, channel_stats, train_classifier


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("circuit")
    data = load_data(DataConfig(limit_train=400, limit_test=100))
    cfg = ModelConfig(channels=(4, 8), fc=16)
    model = build_model(cfg, data.image_shape, data.num_classes, *channel_stats(data.train))
    train_classifier(model, data, TrainConfig(epochs=1, device="cpu"), progress=False)
    sha = save_model(model, cfg, tmp / "model.safetensors", data.image_shape, data.num_classes)
    return tmp, data, sha


@pytest.mark.parametrize("arch", ["relu", "gated", "topk", "batchtopk", "jumprelu"])
def test_every_sae_architecture_splices_exactly(setup, arch):
    tmp, data, sha = setup
    model, meta = load_model(tmp / "model.safetensors")
    x = data.test.images(torch.arange(8))
    with torch.no_grad():
        want = model(x)
    cfg = SAEConfig(arch=arch, expansion=2, k=2)
    splice = Splice(model, {"pool1": build_sae(cfg, 4), "relu3": build_sae(cfg, 16)})
    splice.probe(x)
    with splice.trace() as tr:
        got = model(x)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5
    assert tr["pool1"].eps.abs().max() > 0  # untrained SAEs: the error node carries the difference


def test_checkpoints_to_a_saved_circuit(setup):
    tmp, data, sha = setup
    model, meta = load_model(tmp / "model.safetensors")
    assert meta["sha256"] == sha
    paths = {}
    for layer, d in (("pool1", 4), ("pool2", 8), ("relu3", 16)):
        cfg = SAEConfig(expansion=2)
        paths[layer] = tmp / f"sae_{layer}.safetensors"
        save_sae(build_sae(cfg, d), cfg, paths[layer], {"layer": layer, "model_sha256": meta["sha256"]})
    splice = load_splice(model, meta["sha256"], paths)
    patches = mean_patches(splice, data.train, progress=False)
    ce = make_metric("ce", data.class_names)
    effects = node_effects(splice, data.train.subset(torch.arange(100)), ce, patches, progress=False)
    circuit = find_circuit(splice, data.train.subset(torch.arange(100)), ce, patches, top_k=3, effects=effects,
                           progress=False, meta={"model_sha256": meta["sha256"]})
    circuit.save(tmp / "circuit.safetensors")
    back = Circuit.load(tmp / "circuit.safetensors")
    assert back.meta["model_sha256"] == sha and back.size == circuit.size == 9
    everything = {s: torch.arange(splice.n_nodes(s)) for s in splice.order}
    a = faithfulness(splice, data.test, ce, patches, [circuit, everything], progress=False)
    b = faithfulness(splice, data.test, ce, patches, [back, everything], progress=False)
    assert torch.equal(a.faithfulness, b.faithfulness)
    assert abs(a.faithfulness[1].item() - 1) < 1e-5 and abs(a.completeness[1].item()) < 1e-5
    with pytest.raises(Exception, match="trained on model"):
        load_splice(model, "0" * 64, paths)
