"""Cross-module properties of the SAE stage: model checkpoint → activation cache → trained SAE → spliced evaluation → gate."""
import pytest

from sfc_vision.activations import ActivationCache, CaptureConfig, cache_activations
from sfc_vision.artifacts import ArtifactError
from sfc_vision.data import DataConfig, load_data
from sfc_vision.models import ModelConfig, build_model, load_model
from sfc_vision.sae import SAEConfig, build_sae
from sfc_vision.sae_eval import GateConfig, evaluate_checkpoints, evaluate_saes, layer_vectors, reconstruction_metrics, sae_verdict
from sfc_vision.sae_train import checkpoint_steps, load_checkpoint, train_sae
from sfc_vision.train import TrainConfig, TrainingDiverged, channel_stats, train_classifier


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A small CNN trained one epoch, its checkpoint, a cache of its pool2 activations carrying its SHA-256, and a
    TopK SAE trained 40 steps on them (checkpoints at 20 and 40) in `tmp / "sae"`: each test can run alone."""
    tmp = tmp_path_factory.mktemp("sae")
    data = load_data(DataConfig(limit_train=400, limit_test=100))
    model = build_model(ModelConfig(channels=(4, 8), fc=16), data.image_shape, data.num_classes,
                        *channel_stats(data.train))
    train_classifier(model, data, TrainConfig(epochs=1), tmp / "model", progress=False, device="cpu")
    model, meta = load_model(tmp / "model" / "epoch_001.safetensors")
    cache_activations(model, data.train, CaptureConfig(layers=("pool2",)), tmp / "acts",
                      meta={"model_sha256": meta["sha256"], "dataset": "mnist5k"}, progress=False)
    cfg = SAEConfig(arch="topk", k=3, expansion=2, steps=40, checkpoints=2, batch_size=512, lr_warmup=0.125)
    train_sae(ActivationCache(tmp / "acts" / "pool2"), cfg, tmp / "sae", progress=False, device="cpu")
    return tmp, data, model, meta["sha256"]


def test_sae_records_and_checks_its_model(pipeline):
    tmp, data, model, sha = pipeline
    sae, meta = load_checkpoint(tmp / "sae", expect_layer="pool2", expect_model_sha256=sha)
    assert (meta["model_sha256"], meta["layer"], meta["dataset"]) == (sha, "pool2", "mnist5k")
    with pytest.raises(ArtifactError, match="trained on model_sha256"):
        load_checkpoint(tmp / "sae", expect_model_sha256="0" * 64)


def test_spliced_and_direct_reconstruction_agree(pipeline):
    "The spliced evaluation's reconstruction metrics equal those computed on the layer's vectors directly."
    tmp, data, model, _ = pipeline
    sae, _ = load_checkpoint(tmp / "sae")
    untrained = build_sae(SAEConfig(arch="topk", k=3, expansion=2), 8)
    res = evaluate_saes(model, "pool2", {"trained": sae, "untrained": untrained}, data.test, batch_size=32, device="cpu")
    vecs, positions = layer_vectors(model, "pool2", data.test, device="cpu")
    direct = reconstruction_metrics(sae, vecs, positions)
    for key in ("fve", "nmse", "mse", "l0", "l0_per_image", "dead_fraction"):
        assert res["trained"][key] == pytest.approx(direct[key], rel=1e-6, abs=1e-9), key
    assert res["trained"]["fve"] > res["untrained"]["fve"]
    assert res["trained"]["kl"] < res["untrained"]["kl"]
    assert res["trained"]["l0"] <= 3.0 + 1e-9          # TopK never exceeds k


def test_checkpoints_over_training_and_the_gate(pipeline):
    "Every checkpoint is evaluated with its step; a few steps do not make a trained SAE, and the gate names what fails."
    tmp, data, model, sha = pipeline
    recs = evaluate_checkpoints(model, "pool2", [tmp / "sae"], data.test, all_checkpoints=True, expect_model_sha256=sha,
                                device="cpu")
    assert sorted(r["step"] for r in recs) == checkpoint_steps(tmp / "sae") == [20, 40]
    assert len({r["sae_id"] for r in recs}) == 1 and [r["final"] for r in sorted(recs, key=lambda r: r["step"])] == [False, True]
    final = next(r for r in recs if r["final"])
    assert final["fve"] == pytest.approx(1 - final["nmse"], abs=1e-12)
    verdict = sae_verdict(final, GateConfig(min_fve=0.999))
    assert not verdict["passed"] and verdict["problems"][0]["setting"] == "min_fve"
    assert sae_verdict(final, GateConfig(min_fve=0, min_accuracy_ratio=0, max_dead_fraction=1, max_dense_fraction=1))["passed"]


def test_divergence_commits_nothing(pipeline):
    "A learning rate far too high stops both trainers with an error naming the setting, and no checkpoint is written."
    tmp, data, model, _ = pipeline
    with pytest.raises(TrainingDiverged, match=r"sae\.lr"):
        train_sae(ActivationCache(tmp / "acts" / "pool2"), SAEConfig(lr=1e3, steps=40, batch_size=512), tmp / "sae_div",
                  progress=False, device="cpu", log_every=5)
    assert checkpoint_steps(tmp / "sae_div") == []
    fresh = build_model(ModelConfig(channels=(4, 8), fc=16), data.image_shape, data.num_classes, *channel_stats(data.train))
    with pytest.raises(TrainingDiverged, match=r"lower train\.lr \(1000\)"):
        train_classifier(fresh, data, TrainConfig(epochs=1, lr=1e3), tmp / "model_div", progress=False, device="cpu")
    assert not (tmp / "model_div").exists() or not any((tmp / "model_div").iterdir())
