"""Cross-module properties of interpretability: model and SAE checkpoints → top images → MIS → stored result."""
import json

import pytest
import torch

from sfc_vision.backbones import BackboneConfig, EmbeddingCache, build_backbone
from sfc_vision.config import ConfigError
from sfc_vision.data import DataConfig, load_data
from sfc_vision.interpret import top_images
from sfc_vision.mis import MISConfig, MISResult, run_mis
from sfc_vision.models import ModelConfig, build_model, load_model, save_model
from sfc_vision.sae import IdentityDictionary, SAEConfig, build_sae, load_sae, save_sae


def test_checkpoints_to_stored_mis(tmp_path):
    data = load_data(DataConfig(limit_train=400))
    model = build_model(ModelConfig(), data.image_shape, data.num_classes)
    sha = save_model(model, model.cfg, tmp_path / "model.safetensors", data.image_shape, data.num_classes)
    model, meta = load_model(tmp_path / "model.safetensors")
    sae_cfg = SAEConfig(expansion=2)
    save_sae(build_sae(sae_cfg, 32), sae_cfg, tmp_path / "sae.safetensors", {"layer": "pool2", "model_sha256": sha})
    sae, _ = load_sae(tmp_path / "sae.safetensors", expect_layer="pool2", expect_model_sha256=meta["sha256"])
    cfg = MISConfig(n_tasks=6, n_refs=5, backbone=BackboneConfig(name="proxy"))

    first, top = run_mis(model, "pool2", sae, data.train, cfg, cache_dir=tmp_path / "emb", device="cpu", progress=False)
    # a second run reads every embedding back from disk and gives the same scores
    cache = EmbeddingCache(build_backbone(cfg.backbone, model, device="cpu"), data.train, folder=tmp_path / "emb")
    again, _ = run_mis(model, "pool2", sae, data.train, cfg, embeddings=cache, device="cpu", progress=False)
    assert cache.n_embedded == 0
    torch.testing.assert_close(again.mis, first.mis, rtol=0, atol=0, equal_nan=True)
    # the ranking is the one top_images gives on its own
    assert torch.equal(top.top_index, top_images(model, "pool2", sae, data.train, k=36, activation="pre", progress=False).top_index)

    first.save(tmp_path / "mis.safetensors")
    back = MISResult.load(tmp_path / "mis.safetensors")
    assert back.summary() == first.summary()
    summary = json.loads(json.dumps(first.summary(), allow_nan=False))
    assert summary["dictionary"]["d_sae"] == 64 and summary["backbone"]["name"] == "proxy"
    assert summary["n_scored"] + sum(len(summary[f"{s}_units"]) for s in ("dead", "constant", "sparse")) == 64


def test_bad_input_fails_before_any_pass(tmp_path):
    data = load_data(DataConfig(limit_train=300))
    model = build_model(ModelConfig(), data.image_shape, data.num_classes)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ConfigError, match="needs 200 ranked images per side"):
        run_mis(model, "pool2", build_sae(SAEConfig(), 32), data.train, MISConfig(), progress=False)
    with pytest.raises(FileNotFoundError, match="DreamSim checkpoints not found"):
        run_mis(model, "pool2", build_sae(SAEConfig(), 32), data.train,
                MISConfig.from_dict({"n_tasks": 4, "n_refs": 3, "backbone": {"name": "dreamsim", "weights": str(tmp_path)}}),
                progress=False)
    assert calls == []


def test_sparse_units_are_never_scored_on_padded_ties(tmp_path):
    """Neurons ranked by their output over too small a pool: a unit active on fewer images than MIS
    needs per side is `sparse` (NaN, counted apart), never scored on lists padded with zeros."""
    data = load_data(DataConfig(limit_train=400))
    model = build_model(ModelConfig(), data.image_shape, data.num_classes)
    cfg = MISConfig(n_tasks=6, n_refs=5, activation="post")
    res, top = run_mis(model, "relu3", IdentityDictionary(128), data.train, cfg, device="cpu", progress=False)
    n = cfg.n_candidates
    assert {"scored", "sparse"} <= set(res.status)  # the untrained CNN's relu3 has both (and dead ones)
    for unit, status, mis in zip(res.units.tolist(), res.status, res.mis.tolist()):
        row = top.row(unit)
        ties = bool(top.top_score[row, n - 1] <= top.bottom_score[row, n - 1])
        assert (status == "sparse") == (ties and status not in ("dead", "constant"))
        assert (status == "scored") == (mis == mis)  # NaN exactly where not scored
    summary = res.summary()
    assert summary["n_scored"] == res.status.count("scored") and len(summary["sparse_units"]) == res.status.count("sparse")
