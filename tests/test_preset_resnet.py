"""The Tiny-ImageNet ResNet-18 preset (`configs/tinyimagenet_resnet18.yaml`, trained here) end to end on generated
Tiny-ImageNet-layout JPEGs; see `presets.py`."""
import pytest
from presets import CLASSES, RESNET_SET, TINY_TRAIN, TINY_VAL, check_complete, run_preset, tinyimagenet_folder


@pytest.mark.slow
def test_tinyimagenet_resnet18_preset_trained_here(tmp_path):
    data = tinyimagenet_folder(tmp_path / "tiny-imagenet-200")
    settings = [f"data.root={data}", *RESNET_SET]
    cfg, folder, m = run_preset("tinyimagenet_resnet18.yaml", settings, tmp_path / "runs")
    layers = ["layer1", "layer2", "layer3", "layer4"]
    assert list(cfg.capture.layers) == layers and cfg.circuit.target_class is None
    figures = check_complete(folder, m, layers, len(CLASSES) * TINY_VAL)
    assert "model_training" in figures and m["model"]["trained"] and m["model"]["epochs"] == 4
    for layer in layers:
        assert m["activations"][layer]["n_vectors"] == 4 * m["activations"][layer]["n_images"] == 4 * len(CLASSES) * TINY_TRAIN
    assert m["attribution"]["target_class"] is None and m["attribution"]["n_images"] == 10
    assert list(m["circuit"]["nodes_per_layer"]) == layers
