"""Cross-module properties of attribution and circuits: checkpoints → spliced SAEs → circuit → saved → checked."""
import copy

import pytest
import torch

from sfc_vision.activations import read_layers
from sfc_vision.attribution import make_metric, node_effects
from sfc_vision.circuits import Circuit, faithfulness, feature_density, find_circuit
from sfc_vision.data import DataConfig, TensorImageSet, load_data
from sfc_vision.edges import edge_effects
from sfc_vision.models import ModelConfig, build_model, load_model, save_model
from sfc_vision.sae import ReLUSAE, SAEConfig, build_sae, save_sae
from sfc_vision.splice import Splice, load_splice, make_patches, mean_patches
from sfc_vision.train import TrainConfig, channel_stats, train_classifier


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("circuit")
    data = load_data(DataConfig(limit_train=400, limit_test=100))
    cfg = ModelConfig(channels=(4, 8), fc=16)
    model = build_model(cfg, data.image_shape, data.num_classes, *channel_stats(data.train))
    train_classifier(model, data, TrainConfig(epochs=1), progress=False)
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
    # a random model is at chance: m(M) ≈ m(∅), so F is undefined (NaN) and the metric itself is compared
    assert torch.equal(a.m_circuit, b.m_circuit) and torch.equal(a.faithfulness.isnan(), b.faithfulness.isnan())
    assert abs(a.m_circuit[1].item() - a.m_full) < 1e-5                  # the whole model: m(C) = m(M)
    with pytest.raises(Exception, match="trained on model"):
        load_splice(model, "0" * 64, paths)


def _random_model(arch: str, size: int):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch), (3, size, size), 10)
    if arch == "googlenet":  # torchvision's init (std 0.01) makes activations vanish in a random GoogLeNet
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
    images = TensorImageSet(torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8), torch.arange(4) % 10,
                            [str(i) for i in range(10)])
    with torch.no_grad():  # running statistics unlike a batch's own, so train and eval mode differ
        model.train()(images.images(torch.arange(4)) * 3 + 1)
    return model, images


@pytest.mark.parametrize("arch,size,sites", [("resnet18_small", 16, ["layer2", "layer3.0", "layer3"]),
                                             ("googlenet", 64, ["mixed3a", "mixed3b", "mixed4a"])])
def test_a_model_in_train_mode_is_measured_in_eval_mode(arch, size, sites):
    "Patches, AtP, IG, exact, edges, faithfulness and density of a train-mode model equal the eval-mode model's; its mode and BatchNorm statistics are left alone."
    model, images = _random_model(arch, size)
    x = images.images(torch.arange(1))
    with torch.no_grad(), read_layers(model.eval(), sites) as acts:
        model(x)
    widths = {s: a.shape[1] for s, a in acts.items()}
    ce = make_metric("ce", images.class_names)

    def measure(m):
        torch.manual_seed(1)
        sp = Splice(m, {s: ReLUSAE(widths[s], 2 * widths[s]) for s in sites})
        mean, zero = make_patches(sp, "mean", images, batch_size=3, progress=False), make_patches(sp, "zero", images)
        eff = {k: node_effects(sp, images, ce, mean, method=k, ig_steps=2, batch_size=3, progress=False) for k in ("atp", "ig")}
        first = images.subset(torch.arange(2))
        narrow = Splice(m, {s: ReLUSAE(widths[s], 4) for s in sites})  # exact ablation of few nodes stays cheap
        eff["exact"] = node_effects(narrow, first, ce, make_patches(narrow, "zero", first), method="exact", progress=False)
        nodes = {s: torch.tensor([0, 1, sp.n_nodes(s) - 1]) for s in sp.order}
        edges = edge_effects(sp, first, ce, mean, nodes=nodes, progress=False)
        faith = faithfulness(sp, images, ce, mean, [nodes], n_random=1, batch_size=3, progress=False)
        return mean, zero, eff, edges, faith, feature_density(sp, images, progress=False)

    train = copy.deepcopy(model).train()
    part = "inception3b" if arch == "googlenet" else "layer3"
    next(m for name, m in train.named_modules() if name.endswith(part)).eval()  # a mixed state must come back as it was
    modes = [m.training for m in train.modules()]
    state = {k: v.clone() for k, v in train.state_dict().items()}
    got, want = measure(train), measure(copy.deepcopy(model).eval())
    assert [m.training for m in train.modules()] == modes
    assert all(torch.equal(v, train.state_dict()[k]) for k, v in state.items())  # running statistics untouched
    (mean_t, zero_t, eff_t, edges_t, faith_t, dens_t), (mean_e, zero_e, eff_e, edges_e, faith_e, dens_e) = got, want
    for s in sites:
        s = model.resolve(s)
        for a, b in ((mean_t[s].f, mean_e[s].f), (mean_t[s].eps, mean_e[s].eps), (zero_t[s].eps, zero_e[s].eps),
                     (dens_t[s], dens_e[s])):
            torch.testing.assert_close(a, b)
        for k in eff_t:
            torch.testing.assert_close(eff_t[k].mean[s], eff_e[k].mean[s])
    for pair in edges_e:
        torch.testing.assert_close(edges_t[pair], edges_e[pair])
    torch.testing.assert_close(faith_t.m_circuit, faith_e.m_circuit)   # F itself is NaN for a random model at chance
    torch.testing.assert_close(faith_t.faithfulness, faith_e.faithfulness, equal_nan=True)
    torch.testing.assert_close(faith_t.random, faith_e.random, equal_nan=True)
    assert (faith_t.m_full, faith_t.m_empty) == (faith_e.m_full, faith_e.m_empty)
