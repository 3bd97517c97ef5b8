"""Runs and sweeps end to end — papermill, run folders, the stage cache — on local processes."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import LAMBDAS, REPO, TINY, cli_command, descendants, read_json, tiny_config, write_yaml

from sfc_vision.cache import METRICS_SCHEMA, STAGES, comparable_metrics, run_folder, run_name, stage_key
from sfc_vision.runfolder import run_status
from sfc_vision.runs import STUDY_NOTEBOOKS
from sfc_vision.study_config import StudyConfig

STUDY = REPO / "nbs" / "study"


def papermill_parameters(nb: Path) -> dict:
    "The parameters papermill reads from a notebook's `parameters` cell (what `papermill --help-notebook` shows)."
    import papermill as pm
    return pm.inspect_notebook(str(nb))


def complete_runs(summary):
    return [r for r in summary["runs"] if r["status"] == "complete"]


def check_run_folder(folder: Path, cfg: StudyConfig):
    "Everything a complete run folder promises."
    assert StudyConfig.from_yaml_text((folder / "config.yaml").read_text()) == cfg
    metrics = read_json(folder / "metrics.json")
    assert metrics["schema"] == METRICS_SCHEMA
    assert metrics["run"]["status"] == "complete" and metrics["run"]["error"] is None
    notebooks = sorted(p.name for p in (folder / "notebooks").glob("*.ipynb"))
    assert notebooks == sorted(STUDY_NOTEBOOKS), notebooks  # every study notebook executed, kept
    for name in STUDY_NOTEBOOKS:
        nb = json.loads((folder / "notebooks" / name).read_text())
        assert nb["metadata"]["papermill"]["exception"] in (None, False)
    for stage in metrics["stages"]:
        assert metrics["stages"][stage]["key"] == stage_key(cfg, stage)
        assert (folder / "artifacts" / stage / "stage.json").exists()
    assert 0.5 < metrics["model"]["accuracy"] <= 1
    assert list(metrics["stages"]) == list(STAGES)  # every stage, in pipeline order
    for layer in cfg.capture.layers:
        ev = metrics["sae_eval"][layer]
        assert ev["fve"] <= 1 and 0 <= ev["dead_fraction"] <= 1 and ev["l0"] >= 0 and 0 <= ev["accuracy"] <= 1
        assert {"mse", "loss_recovered_mean", "loss_recovered_zero"} <= set(ev)
        assert 0 <= metrics["mis"]["layers"][layer]["sae"]["median"] <= 1
    c = metrics["circuit"]
    assert c["nodes"] == sum(c["nodes_per_layer"].values()) == cfg.circuit.top_k * len(cfg.capture.layers)
    assert {"faithfulness", "completeness", "edges"} <= set(c)
    for fig in ("model_training", "sae_frequency_relu3", "ie_median", "faithfulness_curves", "circuit", "mis_by_layer"):
        assert (folder / "figures" / f"{fig}.png").exists(), fig
    return metrics


# ---------------------------------------------------------------------------------------------------
# the study notebooks


def test_each_study_notebook_has_one_parameters_cell():
    for name in STUDY_NOTEBOOKS:
        nb = json.loads((STUDY / name).read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged parameters"
        assert "config: dict = {}" in "".join(tagged[0]["source"])  # the embedded default
    assert (STUDY / ".notest").exists() and (REPO / "nbs" / "analysis" / ".notest").exists()  # nbdev-test skips them


# ---------------------------------------------------------------------------------------------------
# a sweep on local processes


def test_sweep_completes_the_good_runs_and_records_the_failure(local_sweep):
    s = local_sweep.summary
    assert local_sweep.result.returncode == 1, local_sweep.result.stderr  # a run failed
    assert s["counts"] == {"complete": 4, "failed": 1}, s
    failed = [r for r in s["runs"] if r["status"] == "failed"]
    assert len(failed) == 1 and "model.weights" in failed[0]["point"]
    f = failed[0]
    assert f["failed_notebook"] == "notebooks/01_model_saes.ipynb"
    assert "ArtifactError" in f["error"] and "weights do not fit cnn" in f["error"]
    assert "weights do not fit cnn" in local_sweep.result.stderr  # the command names it too
    nb = json.loads((local_sweep.runs / f["run"] / f["failed_notebook"]).read_text())  # papermill kept it
    assert nb["metadata"]["papermill"]["exception"] is True
    assert any(o.get("ename") == "ArtifactError" for c in nb["cells"] for o in c.get("outputs", []))
    assert read_json(local_sweep.runs / f["run"] / "metrics.json")["run"]["status"] == "failed"

    good = complete_runs(s)
    assert sorted(r["point"]["sae.l1_coeff"] for r in good) == LAMBDAS
    for r in good:
        cfg = StudyConfig.from_dict({**TINY, "run": {"name": f"lam_l1_coeff={r['point']['sae.l1_coeff']:g}", "group": "lam"},
                                     "sae": {**TINY["sae"], "l1_coeff": r["point"]["sae.l1_coeff"]}})
        assert r["run"] == run_name(cfg)
        check_run_folder(local_sweep.runs / r["run"], cfg)


def test_parameters_reach_the_notebooks(local_sweep):
    "papermill injects the configuration and the notebooks act on it (not on their defaults)."
    for r in complete_runs(local_sweep.summary):
        folder = local_sweep.runs / r["run"]
        for name in STUDY_NOTEBOOKS:
            nb = json.loads((folder / "notebooks" / name).read_text())
            injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
            assert len(injected) == 1
            assert nb["metadata"]["papermill"]["parameters"]["config"]["sae"]["l1_coeff"] == r["point"]["sae.l1_coeff"]
        saes = read_json(folder / "artifacts" / "saes" / "stage.json")
        assert saes["settings"]["sae"]["l1_coeff"] == r["point"]["sae.l1_coeff"]  # what the stage computed with
        assert saes["settings"]["sae"]["expansion"] == TINY["sae"]["expansion"] != 8  # not the default


def test_executed_study_notebooks_show_their_figures(local_sweep):
    "Each executed study notebook of a run carries the run's figures as images, as many as the figures it saved."
    r0 = complete_runs(local_sweep.summary)[0]
    folder = local_sweep.runs / r0["run"]
    images = {}
    for name in STUDY_NOTEBOOKS:
        nb = json.loads((folder / "notebooks" / name).read_text())
        outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
        images[name] = sum("image/png" in o.get("data", {}) for o in outputs)
        assert not any("PosixPath" in "".join(o.get("data", {}).get("text/plain", "")) for o in outputs)  # no stray return values
    assert images["01_model_saes.ipynb"] >= 2 + 2 * len(TINY["capture"]["layers"])  # training, over training, per layer two
    assert images["02_circuits.ipynb"] >= 5 and images["03_interpret.ipynb"] >= 1
    assert sum(images.values()) == len(list((folder / "figures").rglob("*.png")))  # every saved figure (feature pages too) is shown once


def test_a_study_notebook_run_by_papermill_from_elsewhere_writes_into_the_projects_runs(tmp_path):
    "papermill from another working directory, with a config file: the run folder lands in the project's runs/ (or $SFC_VISION_RUNS)."
    import papermill as pm
    cfg_file = write_yaml(tmp_path / "cfg.yaml", tiny_config(run={"name": "papermill_elsewhere", "stages": ["model"]}))
    runs = tmp_path / "runs"
    old = (os.getcwd(), os.environ.get("SFC_VISION_RUNS"))
    os.chdir(tmp_path)
    os.environ["SFC_VISION_RUNS"] = str(runs)
    try:
        pm.execute_notebook(str(STUDY / "01_model_saes.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"config_file": str(cfg_file), "progress": False}, progress_bar=False)
    finally:
        os.chdir(old[0])
        if old[1] is None:
            os.environ.pop("SFC_VISION_RUNS")
        else:
            os.environ["SFC_VISION_RUNS"] = old[1]
    name = run_name(StudyConfig.from_dict(tiny_config(run={"name": "papermill_elsewhere", "stages": ["model"]})))
    assert (runs / name / "stages" / "model.json").exists()
    assert not (tmp_path.parent / "runs").exists() or not any((tmp_path.parent / "runs").glob("papermill_elsewhere-*"))
    params = papermill_parameters(STUDY / "01_model_saes.ipynb")
    assert {"config", "config_file", "runs_root", "force", "force_since", "progress"} <= set(params)
    assert all(p["inferred_type_name"] != "None" for p in params.values())  # --help-notebook names every type


def test_changing_only_lambda_reuses_model_and_activations(local_sweep):
    cache = local_sweep.runs / "_cache"
    committed = lambda stage: sorted(p for p in (cache / stage).iterdir() if (p / "stage.json").exists())
    good = complete_runs(local_sweep.summary)
    assert len(committed("model")) == 1 and len(committed("activations")) == 1  # one classifier, one capture
    assert len(committed("saes")) == len(LAMBDAS)                               # an SAE set per λ
    model, acts = (read_json(committed(s)[0] / "stage.json") for s in ("model", "activations"))
    computed = []
    for r in good:
        stages = read_json(local_sweep.runs / r["run"] / "metrics.json")["stages"]
        assert stages["model"]["key"] == model["key"] and stages["activations"]["key"] == acts["key"]
        computed += [s for s in ("model", "activations") if not stages[s]["cached"]]
        saes = read_json(local_sweep.runs / r["run"] / "artifacts" / "saes" / "stage.json")
        assert saes["upstream"]["activations"]["generation"] == acts["generation"]  # trained on that very capture
    assert sorted(computed) == ["activations", "model"]  # each computed once (by whichever run got there first), reused by the others
    assert acts["upstream"]["model"]["generation"] == model["generation"]


def test_a_configuration_gives_identical_results_alone_and_in_a_sweep(local_sweep, tmp_path, cli):
    """One configuration of the sweep (run there as one of 2 local workers) run again alone, with every core
    offered to torch: the run takes its thread count from `execution.threads`, so the classifier, the SAE
    checkpoints and metrics.json are identical (bookkeeping aside)."""
    r0 = complete_runs(local_sweep.summary)[0]
    cfg_file = local_sweep.runs / "_sweeps" / "lam" / "configs" / f"{r0['run']}.yaml"
    r = cli("run", cfg_file, "--runs", tmp_path / "runs", env={"OMP_NUM_THREADS": str(max(2, os.cpu_count() or 2))})
    assert r.returncode == 0, r.stderr
    alone = read_json(tmp_path / "runs" / r0["run"] / "metrics.json")
    swept = read_json(local_sweep.runs / r0["run"] / "metrics.json")
    assert not any(s["cached"] for s in alone["stages"].values())  # computed afresh in another cache
    assert alone["model"]["sha256"] == swept["model"]["sha256"]
    assert {l: s["sha256"] for l, s in alone["saes"].items()} == {l: s["sha256"] for l, s in swept["saes"].items()}
    assert comparable_metrics(alone) == comparable_metrics(swept)


def test_status_reports_runs_failures_and_cache(local_sweep, cli):
    r = cli("status", "--runs", local_sweep.runs)
    assert r.returncode == 0
    failed = [x for x in local_sweep.summary["runs"] if x["status"] == "failed"][0]
    assert f"failed      {failed['run']}" in r.stdout
    assert "notebooks/01_model_saes.ipynb: ArtifactError: weights do not fit cnn" in r.stdout
    assert "model        1 complete, 1 incomplete" in r.stdout  # the failed run's classifier never committed
    assert "saes         4 complete, 0 incomplete" in r.stdout
    assert "sweep lam (local" in r.stdout and "4 complete" in r.stdout
    st = json.loads(cli("status", "--runs", local_sweep.runs, "--json").stdout)
    assert sorted(x["status"] for x in st["runs"]) == ["complete"] * 4 + ["failed"]


def test_rerunning_a_sweep_redoes_only_what_failed_or_is_missing(local_sweep, cli, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(local_sweep.runs, runs, symlinks=True)
    good = complete_runs(local_sweep.summary)
    gone = good[0]["run"]
    shutil.rmtree(runs / gone)
    kept = {r["run"]: (runs / r["run"] / "metrics.json").stat().st_mtime_ns for r in good[1:]}
    r = cli("sweep", local_sweep.sweep, "--runs", runs)
    assert r.returncode == 1  # the bad configuration fails again
    assert "4 complete already" not in r.stdout and "3 complete already, 2 to run" in r.stdout, r.stdout
    summary = read_json(runs / "_sweeps" / "lam" / "summary.json")
    ran = sorted(x["run"] for x in summary["runs"] if x["ran"])
    failed = [x["run"] for x in summary["runs"] if x["status"] == "failed"]
    assert ran == sorted([gone, *failed])
    assert {x["run"]: (runs / x["run"] / "metrics.json").stat().st_mtime_ns for x in good[1:]} == kept  # untouched
    redone = read_json(runs / gone / "metrics.json")
    assert redone["run"]["status"] == "complete"
    assert all(s["cached"] for s in redone["stages"].values())  # its stages were all in the cache
    assert comparable_metrics(redone) == comparable_metrics(read_json(local_sweep.runs / gone / "metrics.json"))


# ---------------------------------------------------------------------------------------------------
# kills, resumption, determinism


KILL_CONFIG = tiny_config(sae={"steps": 800, "checkpoints": 4}, run={"name": "resume", "stages": ["sae_eval"]})  # study notebook 1 only


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cli):
    "The kill test's configuration, run once without interruption."
    root = tmp_path_factory.mktemp("reference")
    cfg_file = write_yaml(root / "cfg.yaml", KILL_CONFIG)
    r = cli("run", cfg_file, "--runs", root / "runs")
    assert r.returncode == 0, r.stderr
    folder = run_folder(root / "runs", run_name(StudyConfig.from_dict(KILL_CONFIG)))
    return SimpleNamespace(cfg_file=cfg_file, folder=folder, metrics=read_json(folder / "metrics.json"), stdout=r.stdout)


def test_a_run_ends_with_each_layers_sae_verdict(reference_run):
    "`sfc-vision run` prints, per layer, the SAE's held-out quality and the quality gate's verdict, as metrics.json has it."
    lines = reference_run.stdout.splitlines()
    assert any("1−NMSE" in l and "verdict" in l for l in lines), reference_run.stdout
    for layer, e in reference_run.metrics["sae_eval"].items():
        assert any(l.split()[:1] == [layer] and l.rstrip().endswith(e["gate"]["verdict"]) for l in lines), (layer, reference_run.stdout)



def notebook_text(path: Path) -> str:
    "Every output of an executed notebook as text (streams, and the text/plain and text/markdown of results)."
    out = []
    for cell in json.loads(path.read_text())["cells"]:
        for o in cell.get("outputs", []):
            out += o.get("text", []) + [t for k in ("text/plain", "text/markdown") for t in o.get("data", {}).get(k, [])]
    return "".join(out)


def test_an_undertrained_sae_fails_the_gate_and_every_table_marks_its_site(tmp_path, cli):
    "Five optimiser steps: the run completes, but the gate, the run's tables, status and the report all say the SAE is not trained."
    cfg_file = write_yaml(tmp_path / "cfg.yaml", tiny_config(sae={"steps": 5, "checkpoints": 1}, run={"name": "undertrained"},
                                                             circuit={"select": "faithfulness", "target_faithfulness": 0.5}))
    r = cli("run", cfg_file, "--runs", tmp_path / "runs")
    assert r.returncode == 0, r.stdout + r.stderr
    folder = run_folder(tmp_path / "runs", run_name(StudyConfig.from_yaml_text(cfg_file.read_text())))
    metrics = read_json(folder / "metrics.json")
    failed = [layer for layer, e in metrics["sae_eval"].items() if not e["gate"]["passed"]]
    assert failed == list(TINY["capture"]["layers"]), metrics["sae_eval"]   # 5 steps train no SAE
    circuits, mis = (notebook_text(folder / "notebooks" / n) for n in ("02_circuits.ipynb", "03_interpret.ipynb"))
    status = cli("status", "--runs", tmp_path / "runs").stdout
    for layer in failed:
        verdict = metrics["sae_eval"][layer]["gate"]["verdict"]
        assert verdict.startswith("not trained"), verdict
        assert any(l.split()[:1] == [layer] and l.rstrip().endswith(verdict) for l in r.stdout.splitlines()), r.stdout
        assert f"| {layer} |" in circuits and circuits.count("failed the gate |") == len(failed), circuits  # circuit table
        assert mis.count("failed the gate |") == len(failed), mis                                          # MIS table
        assert f"{layer} not trained" in status, status
    from sfc_vision.report import build_report
    page = (build_report(tmp_path / "runs", tmp_path / "report", notebooks=False).parent / "runs" / folder.name / "index.html").read_text()
    assert page.count("not trained") >= len(failed)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the kernel processes to kill through /proc")
def test_a_run_killed_mid_stage_resumes_without_recomputing_and_matches(reference_run, tmp_path, cli):
    runs = tmp_path / "runs"
    cfg = StudyConfig.from_dict(KILL_CONFIG)
    proc = subprocess.Popen(cli_command() + ["run", str(reference_run.cfg_file), "--runs", str(runs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"OMP_NUM_THREADS": "1", **os.environ})
    saes_dir = runs / "_cache" / "saes" / stage_key(cfg, "saes")
    first = saes_dir / "pool2" / "step_000200.json"  # the SAE stage is under way: one checkpoint of four done
    deadline = time.time() + 300
    while not first.exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before the SAE stage started"
        time.sleep(0.02)
    for pid in [proc.pid, *descendants(proc.pid)]:  # SIGKILL: no cleanup, as when a node dies
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert not (saes_dir / "stage.json").exists()  # killed mid-stage: not committed
    assert run_status(run_folder(runs, run_name(cfg))) == "interrupted"  # its status says so (its process is gone)
    done = {s: (runs / "_cache" / s / stage_key(cfg, s) / "stage.json") for s in ("model", "activations")}
    before = {s: p.read_bytes() for s, p in done.items()}
    step200 = (saes_dir / "pool2" / "step_000200.safetensors").read_bytes()

    r = cli("run", reference_run.cfg_file, "--runs", runs)
    assert r.returncode == 0, r.stderr
    metrics = read_json(run_folder(runs, run_name(cfg)) / "metrics.json")
    assert {s: v["reason"] for s, v in metrics["stages"].items()} == {
        "model": "cached", "activations": "cached", "saes": "incomplete", "sae_eval": "missing"}
    assert {s: p.read_bytes() for s, p in done.items()} == before  # completed stages untouched
    assert (saes_dir / "pool2" / "step_000200.safetensors").read_bytes() == step200  # resumed after the first checkpoint
    assert comparable_metrics(metrics) == comparable_metrics(reference_run.metrics)  # as if never killed


def test_same_configuration_same_seed_identical_metrics(reference_run, tmp_path, cli):
    r = cli("run", reference_run.cfg_file, "--runs", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    again = read_json(run_folder(tmp_path / "runs", reference_run.folder.name) / "metrics.json")
    assert not any(s["cached"] for s in again["stages"].values())  # computed afresh, not read from a cache
    assert comparable_metrics(again) == comparable_metrics(reference_run.metrics)
    assert again["model"]["history"][0]["train_loss"] == reference_run.metrics["model"]["history"][0]["train_loss"]
