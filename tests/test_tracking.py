"""Experiment tracking end to end: a tracked run sends its training curves, stage results and figures to TensorBoard
(offline W&B is tested in nbs/01a_tracking.ipynb), grouped by its sweep, and changes no result."""
from __future__ import annotations

import pytest

from conftest import TINY, read_json, run_cli, write_yaml
from sfc_vision.cache import comparable_metrics


@pytest.mark.slow
def test_a_tracked_run_logs_curves_stages_and_figures_and_changes_no_result(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    base = write_yaml(tmp_path / "base.yaml", {**TINY, "run": {"name": "tracked", "stages": ["sae_eval"]}})
    sweep = write_yaml(tmp_path / "s.yaml", {"name": "trk", "base": "base.yaml", "points": [{"run.feature_pages": 2}],
                                             "executor": {"kind": "local", "workers": 1},
                                             "overrides": {"execution.tracking": "tensorboard"}})
    r = run_cli("sweep", sweep, "--runs", tmp_path / "runs")
    assert r.returncode == 0, r.stdout + r.stderr
    [run] = [d for d in (tmp_path / "runs").iterdir() if d.name.startswith("trk")]
    acc = EventAccumulator(str(run / "tracking" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    metrics = read_json(run / "metrics.json")
    for layer in TINY["capture"]["layers"]:    # each SAE's curve, step by step as its trainer recorded it
        loss = acc.Scalars(f"sae/{layer}/loss")
        assert [e.step for e in loss][-1] == TINY["sae"]["steps"]
    assert acc.Scalars("classifier/test_accuracy")[-1].value == pytest.approx(metrics["model"]["history"][-1]["test_accuracy"])
    assert acc.Scalars("summary/model/accuracy")[0].value == pytest.approx(metrics["model"]["accuracy"])
    for layer in TINY["capture"]["layers"]:    # the gate's verdict, as 1/0
        assert acc.Scalars(f"summary/sae_eval/{layer}/gate/passed")[0].value == float(metrics["sae_eval"][layer]["gate"]["passed"])
    assert {"stages/model/wall_s", "stages/saes/cached"} <= set(tags["scalars"])
    assert any(t.startswith("figures/") for t in tags["images"])
    assert "trk" in (run / "config.yaml").read_text()           # run.group: the sweep's name
    # the same configuration untracked: every stage reused, the same results
    plain = run_cli("run", base, "--runs", tmp_path / "runs")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    [other] = [d for d in (tmp_path / "runs").iterdir() if d.name.startswith("tracked")]
    assert comparable_metrics(read_json(other / "metrics.json")) == comparable_metrics(metrics)
    assert not (other / "tracking").exists()
