"""Shared pieces of the end-to-end tests: a tiny study configuration, the `sfc-vision` command as a
subprocess, and one local sweep that several tests inspect."""
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

from sfc_vision.testing import TINY, tiny_config  # the tiny study configuration the notebooks test with too

REPO = Path(__file__).resolve().parent.parent

LAMBDAS = [0.03, 0.1, 0.3, 1.0]


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


def descendants(pid: int) -> list[int]:
    "Every process below `pid` (papermill's kernels run in their own sessions, so a process group kill misses them)."
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out += children.get(p, [])
        todo += children.get(p, [])
    return out


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


def tree(folder: Path) -> dict[str, str]:
    "Every file under `folder` by path: its SHA-256, or for a link where it points (a snapshot to compare byte for byte)."
    import hashlib
    return {p.relative_to(folder).as_posix(): (f"-> {os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}
