"""Shared pieces of the end-to-end tests: a tiny study configuration, the `sfc-vision` command as a
subprocess, and one local sweep that several tests inspect."""
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent

# Every stage in seconds: 1000 training digits, an 8-16-32 CNN trained for two epochs (~85 % test
# accuracy), two small layers, SAEs of width 2× for one epoch, attribution on 50 images, circuits
# checked on 50, MIS with 4 tasks of 3 references on 100 test images.
TINY = {
    "run": {"name": "tiny"},
    "data": {"limit_train": 1000, "limit_test": 200},
    "model": {"channels": [8, 16], "fc": 32},
    "train": {"epochs": 2, "batch_size": 20, "lr": 0.005, "device": "cpu"},
    "capture": {"layers": ["pool2", "relu3"], "device": "cpu"},
    "sae": {"expansion": 2, "epochs": 1, "batch_size": 256, "lr_warmup_steps": 0, "init_sample": 2000, "device": "cpu"},
    "evaluation": {"n_images": 100, "device": "cpu"},
    "attribution": {"n_images": 50, "n_reference": 50, "device": "cpu"},
    "circuit": {"n_eval": 50, "curve_points": 3, "n_random": 1},
    "mis": {"n_tasks": 4, "n_refs": 3, "device": "cpu", "backbone": {"device": "cpu"}},
}
LAMBDAS = [0.03, 0.1, 0.3, 1.0]


def tiny_config(**sections) -> dict:
    "A copy of TINY with some sections updated (`sae=dict(epochs=3)` merges into TINY's sae section)."
    cfg = copy.deepcopy(TINY)
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def write_yaml(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def cli_command() -> list[str]:
    "The installed `sfc-vision` console script (beside this Python), else the same entry point through `-c`."
    script = Path(sys.executable).parent / "sfc-vision"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from sfc_vision.cli import main; sys.exit(main())"]


def run_cli(*args, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    "Run `sfc-vision ARGS…` (one torch thread unless the environment says otherwise); return the completed process."
    full_env = {"OMP_NUM_THREADS": "1", **os.environ, **(env or {})}
    return subprocess.run(cli_command() + [str(a) for a in args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="session")
def cli():
    return run_cli


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    """A sweep over λ (4 runs) plus one configuration made to fail (weights of an MLP for the CNN: the
    checkpoint exists, so the run starts, and fails in the classifier stage), on 2 local processes."""
    from sfc_vision.models import ModelConfig, build_model
    root = tmp_path_factory.mktemp("local_sweep")
    bad = root / "mlp_weights.pth"
    torch.save(build_model(ModelConfig(arch="mlp"), (1, 28, 28), 10).net.state_dict(), bad)
    write_yaml(root / "base.yaml", TINY)
    sweep = write_yaml(root / "lam.yaml", {
        "name": "lam", "base": "base.yaml",
        "grid": {"sae.l1_coeff": LAMBDAS},
        "points": [{"model.weights": str(bad)}],
        "executor": {"kind": "local", "workers": 2}})
    start = time.time()
    result = run_cli("sweep", sweep, "--runs", root / "runs")
    return SimpleNamespace(root=root, runs=root / "runs", sweep=sweep, result=result, wall_s=time.time() - start,
                           summary=read_json(root / "runs" / "_sweeps" / "lam" / "summary.json"))
