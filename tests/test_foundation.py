"""Cross-module properties of the foundation: model checkpoint → activation cache → read back."""
import torch

from sfc_vision.activations import ActivationCache, CaptureConfig, cache_activations, read_layers, to_vectors
from sfc_vision.data import DataConfig, load_data
from sfc_vision.models import ModelConfig, build_model, load_model
from sfc_vision.train import TrainConfig, channel_stats, train_classifier


def test_checkpoint_to_cache_round_trip(tmp_path):
    data = load_data(DataConfig(limit_train=300, limit_test=100))
    mean, std = channel_stats(data.train)
    model = build_model(ModelConfig(channels=(4, 8), fc=16), data.image_shape, data.num_classes, mean, std)
    train_classifier(model, data, TrainConfig(epochs=1), tmp_path / "model", progress=False)
    loaded, meta = load_model(tmp_path / "model" / "epoch_001.safetensors")
    cfg = CaptureConfig(layers=("pool2", "relu3"))
    infos = cache_activations(loaded, data.test, cfg, tmp_path / "cache", meta={"model_sha256": meta["sha256"]},
                              progress=False)
    assert infos["pool2"]["model_sha256"] == meta["sha256"]
    with torch.no_grad(), read_layers(model, ["relu3"]) as direct:  # the original, not the loaded, model
        model.eval()(data.test.images(torch.arange(len(data.test))))
    cache = ActivationCache(tmp_path / "cache" / "relu3")
    acts, image, _ = next(cache.batches(10**6, shuffle=False, with_index=True))
    expected = to_vectors(direct["relu3"])[image.long()].half().float()
    assert torch.equal(acts, expected)
