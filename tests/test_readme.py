"""The README's Python snippet runs as written (on the tiny configuration, over the local sweep's stage cache)
and leaves a consistent run: its status recorded, its feature page saved."""
import os
import re
from pathlib import Path

from conftest import REPO, write_yaml
from sfc_vision.runfolder import list_runs
from sfc_vision.testing import TINY


def readme_python() -> str:
    "The README's one Python snippet."
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) == 1, f"README.md has {len(blocks)} Python snippets; this test runs one"
    return blocks[0]


def test_readme_snippet_leaves_a_consistent_run(local_sweep, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    os.symlink(local_sweep.runs / "_cache", runs / "_cache")  # the sweep's stages (λ = 0.3 among them): nothing recomputed
    config = write_yaml(tmp_path / "default.yaml", TINY)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    os.symlink(config, tmp_path / "configs" / "default.yaml")
    exec(compile(readme_python(), "README.md", "exec"), {})
    [run] = list_runs(runs)
    summary = run.summary()
    assert summary["status"] in ("complete", "failed") and summary["damaged"] == [], summary  # recorded, not "missing"
    if summary["status"] == "failed":  # the stages the snippet did not ask for, named
        assert summary["error"].startswith("used from Python; not computed: ") and "circuit" not in summary["error"]
    assert run.metrics["run"]["status"] == summary["status"]  # metrics.json agrees: no run left "running"
    assert (run.path / "figures" / "features" / "sae_pool2_17.png").stat().st_size > 0  # the page is saved
