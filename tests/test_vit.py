"""The small digits ViT end to end through every stage, at a tiny size: every SAE passes the quality gate, the circuit
reaches its faithfulness target on held-out images, feature pages carry token heatmaps on the patch grid, and MIS has
values for SAE features and neurons under both rankings."""
import pytest
import torch
from conftest import tiny_config

from sfc_vision import stages
from sfc_vision.report import node_media
from sfc_vision.stages import RunOutputs, Study
from sfc_vision.study_config import StudyConfig

LAYERS = ["resid_0", "attn_1", "mlp_1", "resid_1"]


def tiny_vit() -> dict:
    """The tiny study configuration on a 2-block ViT of width 32 (7 px patches: 16 patch tokens and the class token).
    Width 16 trained a classifier too weak for the gate: its SAEs' spliced accuracy fell by more than 2 %."""
    cfg = tiny_config(run={"name": "tiny_vit"}, train={"epochs": 8, "batch_size": 50, "lr": 0.003},
                      capture={"layers": LAYERS, "tokens": "all"},
                      sae={"arch": "topk", "k": 16, "expansion": 8, "steps": 400},
                      evaluation={"n_images": 200},  # the whole test split: the gate's accuracy ratio in steps of 0.5 %
                      circuit={"select": "faithfulness", "margin": 0.05, "n_edge_images": 20})
    cfg["model"] = {"arch": "vit", "patch": 7, "depth": 2, "dim": 32, "heads": 2, "mlp_dim": 64}
    return cfg


@pytest.fixture(scope="module")
def vit_study(tmp_path_factory):
    study = Study(StudyConfig.from_dict(tiny_vit()), tmp_path_factory.mktemp("vit_runs"), progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages, "FEATVIS_STEPS", 8)  # the pages' feature visualisations: a few steps suffice to test the wiring
        for name in stages.STAGES:
            study.ensure(name)
    return study


def test_the_small_vit_runs_every_stage_with_gated_saes_and_a_faithful_circuit(vit_study):
    summary = lambda name: vit_study.ensure(name)["summary"]
    gates = {layer: summary("sae_eval")[layer]["gate"] for layer in LAYERS}
    assert all(g["passed"] for g in gates.values()), gates
    c = summary("circuit")
    assert c["held_out_reached"] and c["faithfulness"] >= c["target_faithfulness"] == 0.9, c
    assert c["neurons"]["reached"]
    mis = summary("mis")["layers"]
    for layer in LAYERS:
        for kind in ("sae", "neurons"):
            assert 0 < mis[layer][kind]["median"] <= 1 and mis[layer][kind]["n_scored"] > 0, (layer, kind)
            assert mis[layer]["alternatives"]["ranking"][kind] is not None     # the other ranking, both kinds alike
    assert summary("mis")["activation"] == "pre" and mis[LAYERS[0]]["alternatives"]["ranking"]["activation"] == "post"
    assert set(summary("selectivity")["layers"]) == set(LAYERS)


def test_vit_feature_pages_show_token_heatmaps_on_the_patch_grid(vit_study):
    out = RunOutputs(vit_study)
    model, _ = out.model()
    shown = 0
    for layer in LAYERS:
        for kind in ("sae", "neurons"):
            page = out.pages(layer, kind)
            if page is None:
                continue
            prof, extra = page
            u, k = prof.top_index.shape
            assert prof.top_maps.shape == (u, k, 4, 4) and prof.top_cls.shape == (u, k)   # 28 px / 7 px patches
            best = torch.maximum(prof.top_maps.float().flatten(2).amax(2), prof.top_cls)  # max over every token
            torch.testing.assert_close(best, prof.top_score, atol=2e-2 * prof.top_score.abs().max().item(), rtol=0)
            assert extra["featvis"].shape[1:] == (1, 28, 28)
            thumbs, names, labels = out.page_images(layer)
            media = node_media(prof, extra, int(prof.units[0]), thumbs, names, labels)
            assert all(t["heat"] and "cls" in t for t in media["top"]) and "every token" in media["statistic"]
            assert media["featvis"]["objective"] == "mean over tokens"
            shown += u
    assert shown > 0
