"""The `sfc-vision` command: presets, bad input refused before anything runs, run folder names, figures."""
import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY, read_json, tiny_config, write_yaml

from sfc_vision.config import ConfigError
from sfc_vision.cli import main
from sfc_vision.cache import run_folder, run_name
from sfc_vision.stages import Study
from sfc_vision.study_config import StudyConfig, commented_yaml, load_config

CONFIGS = REPO / "configs"
OFFLINE = ("default.yaml", "default_sweep.yaml", "default_companions.yaml", "mnist_vit.yaml", "mnist_vit_sweep.yaml")  # need no data, weights or GPU: they would run
PRESETS = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in OFFLINE)


# ---------------------------------------------------------------------------------------------------
# presets


def test_default_preset_is_the_embedded_default_and_up_to_date():
    text = (CONFIGS / "default.yaml").read_text()
    assert load_config(CONFIGS / "default.yaml") == StudyConfig()
    body = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
    assert body == commented_yaml(StudyConfig()), "configs/default.yaml is stale: regenerate it with `sfc-vision config`"


def test_there_are_the_thesis_presets():
    assert PRESETS == ["cifar10_cnn.yaml", "imagenet_googlenet.yaml", "mnist_mlp.yaml", "tinyimagenet_resnet18.yaml",
                       "tinyimagenet_resnet18_finetune.yaml"]
    g = load_config(CONFIGS / "imagenet_googlenet.yaml")
    assert g.model.arch == "googlenet" and g.model.weights == "default"
    assert list(g.capture.layers) == [f"mixed{b}" for b in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
    assert load_config(CONFIGS / "tinyimagenet_resnet18.yaml").model.arch == "resnet18_small"
    ft = load_config(CONFIGS / "tinyimagenet_resnet18_finetune.yaml")
    assert ft.model.arch == "resnet18_small" and ft.model.reinit == ("conv1", "fc") and ft.train.finetune


def test_the_default_companions_differ_from_the_default_in_one_setting_each():
    "The claims table reads them as the representative point's replicates but for resampling or the MIS backbone."
    from sfc_vision.claims import point_of
    from sfc_vision.sweeps import load_sweep
    _, points = load_sweep(CONFIGS / "default_companions.yaml")
    default = StudyConfig()
    changed = set()
    for point, cfg in points:
        seed = point["sae.seed"]
        seeded = StudyConfig.from_dict({**default.to_dict(), **{s: {**default.to_dict()[s], "seed": seed}
                                                               for s in ("model", "train", "capture", "sae", "circuit", "mis")}})
        diff = [s for s in ("sae", "mis") if getattr(cfg, s) != getattr(seeded, s)]
        assert len(diff) == 1, (point, diff)
        changed.add((diff[0], cfg.sae.resample, cfg.mis.backbone.name))
        assert point_of(cfg.replace(sae=seeded.sae, mis=seeded.mis).to_dict()) == point_of(default.to_dict())
    assert changed == {("sae", "bricken", "gradients"), ("mis", "none", "efficientnet_lite0")}
    assert sorted(p["sae.seed"] for p, _ in points) == [0, 0, 1, 1, 2, 2]


def test_the_default_sweep_replicates_the_default_five_times_and_the_other_lambdas_to_the_sae_evaluation():
    """The claims over the representative point (the embedded default) get five seeds and every stage; the other λ
    run through the SAE evaluation only (the trade-off rows and figures), three seeds each, and differ from the
    default in λ alone."""
    from sfc_vision.claims import point_of
    from sfc_vision.sweeps import load_sweep
    _, points = load_sweep(CONFIGS / "default_sweep.yaml")
    default = point_of(StudyConfig().to_dict())
    full = [cfg for _, cfg in points if point_of(cfg.to_dict()) == default]
    assert sorted(cfg.sae.seed for cfg in full) == [0, 1, 2, 3, 4] and all(cfg.run.stages == () for cfg in full)
    rest = [cfg for _, cfg in points if point_of(cfg.to_dict()) != default]
    assert sorted({cfg.sae.l1_coeff for cfg in rest}) == [0.03, 0.1, 1.0] and len(rest) == 9
    for cfg in rest:
        assert cfg.run.stages == ("sae_eval",)
        assert point_of(cfg.replace(sae=cfg.sae.replace(l1_coeff=StudyConfig().sae.l1_coeff)).to_dict()) == \
            point_of(full[cfg.sae.seed].to_dict())


def main_(*args) -> tuple[int, str, str]:
    "`sfc-vision ARGS…` in this process (the console script's `main`): exit status, stdout, stderr."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_without_their_data_weights_or_gpu_fail_early_and_clearly(preset, tmp_path, monkeypatch):
    cfg = load_config(CONFIGS / preset)
    home = tmp_path / "home"  # an empty home: no ~/data, no torch cache
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    code, _, err = main_("run", CONFIGS / preset, "--runs", tmp_path / "runs")
    assert code == 2, err
    assert f"run {cfg.run.name!r} cannot start" in err
    assert f"data.root: {home}/data" in err and "does not exist" in err  # where it looked, what is missing
    if cfg.model.weights == "default":
        assert f"model.weights: the googlenet ImageNet weights are not at {home}/torch/hub/checkpoints/googlenet-" in err
    if cfg.run.needs_gpu and not torch.cuda.is_available():
        assert "run.needs_gpu: this configuration needs a CUDA GPU" in err
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing was written


def test_a_torchvision_preset_with_an_empty_data_folder_names_the_missing_files(tmp_path, cli):
    "(Through the installed console script: its exit status and message.)"
    r = cli("run", CONFIGS / "cifar10_cnn.yaml", "--set", f"data.root={tmp_path}", "--runs", tmp_path / "runs")
    assert r.returncode == 2
    assert f"cifar10 is not under {tmp_path} (torchvision looks in {tmp_path}/cifar-10-batches-py)" in r.stderr
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("text, message", [
    ("grid: {sae.l1_coef: [0.1, 0.3]}", 'point {"sae.l1_coef": 0.1}: sae.l1_coef: unknown key in SAEConfig; valid keys:'),
    ("grid: {model.arch: [cnn, resnet50]}", "model.arch: unknown value 'resnet50'; valid choices: mlp, cnn"),
    ("grid: {sae.l1_coeff: [0.1, -1]}", "sae.l1_coeff: -1.0 is out of range"),
    ("grid: {capture.layers: [[pool2], [conv7]]}", "capture.layers[0]: layer 'conv7' is not a layer of cnn"),
    ("points: [{trian.epochs: 3}]", "trian: unknown key in StudyConfig; valid keys: run, data"),
    ("gird: {sae.l1_coeff: [0.1]}", "gird: unknown key in SweepConfig; valid keys: name, base, overrides, grid"),
    ("executor: {kind: local, workerz: 2}", "executor.workerz: unknown key in ExecutorConfig"),
    ("executor: {kind: pbs}", "executor.kind: unknown value 'pbs'; valid choices: local, slurm"),
    ("grid: {sae.l1_coeff: 0.1}", "grid.sae.l1_coeff: expected a non-empty list"),
    ("overrides: {data.name: imagenet}", "data.name: unknown value 'imagenet'; valid choices: mnist5k"),
])
def test_a_bad_sweep_file_is_rejected_before_anything_runs(text, message, tmp_path):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text("name: bad\n" + text + "\n")
    code, _, err = main_("sweep", sweep, "--runs", tmp_path / "runs")
    assert code == 2 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_a_sweep_whose_runs_miss_data_is_rejected_before_anything_runs(tmp_path):
    sweep = write_yaml(tmp_path / "s.yaml", {"grid": {"data.name": ["mnist5k", "cifar10"]},
                                             "overrides": {"data.root": str(tmp_path / "nothing")}})
    code, _, err = main_("sweep", sweep, "--runs", tmp_path / "runs")
    assert code == 2 and f"data.root: {tmp_path}/nothing does not exist" in err
    assert not (tmp_path / "runs").exists()


def test_bad_run_arguments(tmp_path):
    for args, message in [(["--set", "train.epochs=0"], "train.epochs: 0 is out of range"),
                          (["--set", "train.epochs"], "expected key=value"),
                          (["--force", "sea"], "force: unknown value 'sea'; valid choices: all, model"),
                          (["--runs"], "expected one argument")]:
        code, _, err = main_("run", "--runs", tmp_path / "runs", *args)
        assert code == 2 and message in err, (args, err)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------
# run folder names


@pytest.mark.parametrize("name", ["../../escape", "/etc/passwd", "..", "a/../../b", "~root", ".hidden", "x" * 300,
                                  "C:\\Windows", "nul", "ünï/cøde", "\u202e\x00"])
def test_a_run_folder_name_cannot_escape_runs(name, tmp_path):
    cfg = StudyConfig.from_dict({"run": {"name": name}})
    folder = run_folder(tmp_path / "runs", run_name(cfg))
    assert folder.parent == (tmp_path / "runs").resolve()
    assert len(folder.name) <= 71 and folder.name[0].isalnum()
    with pytest.raises(ConfigError, match="is not a plain folder name"):
        run_folder(tmp_path / "runs", name)


def test_a_run_named_to_escape_lands_inside_runs(tmp_path):
    "The run folder (config.yaml is written before any stage runs) of a run named to escape is inside runs/."
    runs = tmp_path / "a" / "b" / "runs"
    study = Study(StudyConfig.from_dict(tiny_config(run={"name": "../../escape"})), runs)
    made = sorted(p.name for p in runs.iterdir())
    assert len(made) == 1 and made[0].startswith("escape-") and study.run_dir == runs.resolve() / made[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "config.yaml", made[0], "runs"]  # nothing else


# ---------------------------------------------------------------------------------------------------
# figures


def test_a_two_seed_sweep_gives_a_claims_table_with_intervals(tmp_path, cli):
    "Every point of a sweep replicated over two seeds: the claims get Student-t intervals over the two, and verdicts."
    from scipy import stats
    # the gate opened: this test is about the intervals (replicates whose SAEs fail the gate are left out of the
    # rows, and the tiny SAEs are not all healthy; the gate's exclusion is tested with the claims)
    write_yaml(tmp_path / "base.yaml", tiny_config(circuit={"select": "faithfulness", "target_faithfulness": 0.5},
                                                   gate={"min_fve": 0.0, "min_accuracy_ratio": 0.0, "max_dead_fraction": 1.0,
                                                         "max_dense_fraction": 1.0}))
    sweep = write_yaml(tmp_path / "seeds.yaml", {"name": "seeds", "base": "base.yaml", "grid": {"sae.l1_coeff": [1.0]},
                                                 "seeds": [0, 1], "executor": {"kind": "local", "workers": 2}})
    r = cli("sweep", sweep, "--runs", tmp_path / "runs")
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("figures", "--runs", tmp_path / "runs", "--out", tmp_path / "figures")
    assert r.returncode == 0, r.stdout + r.stderr
    claims = {c["claim"]: c for c in read_json(tmp_path / "figures" / "claims.json")["claims"]}
    measured = [claims[k] for k in ("mis_sae_vs_neurons_relu3", "nodes_for_f90", "held_out_faithfulness", "mis_backbone_relu3",
                                    "ie_mis_spearman_sae_relu3", "mis_vs_class_entropy_sae_relu3")]  # the last two: per-unit outputs
    assert {"circuit_mis_sae_relu3", "circuit_mis_neurons_pool2"} <= set(claims)
    t = stats.t.ppf(0.975, 1)
    for c in measured:
        assert c["n"] == 2 and c["lo"] is not None, c
        assert abs((c["hi"] - c["mean"]) - t * c["sd"] / 2 ** 0.5) < 1e-9 and abs((c["mean"] - c["lo"]) - (c["hi"] - c["mean"])) < 1e-9
        assert c["verdict"] == ("supported" if (c["lo"] > 0) == (c["direction"] > 0) and c["lo"] * c["hi"] > 0
                                else "not supported" if c["lo"] * c["hi"] > 0 else "inconclusive")
    md = (tmp_path / "figures" / "claims.md").read_text()
    assert all(c["question"] in md for c in claims.values())
    assert "reach faithfulness 0.5?" in md  # the questions name the configured target


def test_figures_from_the_runs(local_sweep, tmp_path, cli):
    out = tmp_path / "figures"
    r = cli("figures", "--runs", local_sweep.runs, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    index = read_json(out / "index.json")["figures"]
    assert index, "no figure was made"
    readme = (out / "README.md").read_text()
    complete = sorted(x["run"] for x in local_sweep.summary["runs"] if x["status"] == "complete")
    for e in index:
        assert (out / e["file"]).read_bytes()[:4] == b"\x89PNG"
        assert f"[{e['file']}]({e['file']})" in readme and e["made_by"].startswith("nbs/analysis/")
        assert set(e["runs"]) <= set(complete)  # made from complete runs only
    assert sorted(p.name for p in out.glob("*.png")) == sorted(e["file"] for e in index)
