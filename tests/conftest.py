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


# Under pytest-xdist (the README's test command runs `-n auto --dist loadfile`) each test file is one work
# unit, so a module's fixtures are made once and its tests run in order on one worker; the two preset tests
# (minutes each) have a file each. The longest files start first. (`--dist loadgroup` with `xdist_group`
# marks is not used: under pytest 9.2 with pytest-xdist 3.8 the group no longer reaches the scheduler,
# pytest-dev/pytest-xdist#1386, and a module's tests were dealt out singly.) Each worker has its own
# temporary folder: a run clears the kernel folders that killed runs left in it (`clean_kernel_leftovers`),
# which must not reach into a test on another worker that is inspecting its own.
LONGEST_FIRST = ["test_preset_googlenet.py", "test_preset_resnet.py", "test_report.py", "test_vit_b16.py", "test_faults.py",
                 "test_runs.py", "test_slurm.py", "test_tracking.py", "test_cli.py"]


@pytest.hookimpl(tryfirst=True)  # before xdist sends the collection
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        import tempfile
        tmp = Path(tempfile.gettempdir()) / f"sfc-vision-tests-{os.getpid()}-{worker}"
        tmp.mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o1777)                # like /tmp: the SLURM test's services (MariaDB as mysql) write here too
        os.environ["TMPDIR"] = str(tmp)  # this worker's runs and their kernels
        tempfile.tempdir = None          # read TMPDIR again


@pytest.fixture(scope="session")
def cli():
    return run_cli


def shared_dir(tmp_path_factory, name: str) -> Path:
    "A folder every pytest-xdist worker of this session sees (the session's base folder, above the workers' own)."
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / name


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    """A sweep over λ (4 runs) plus one configuration made to fail (weights of an MLP for the CNN: the
    checkpoint exists, so the run starts, and fails in the classifier stage), on 2 local processes.

    Made once per test session: under pytest-xdist the first worker to ask runs it, the others wait for it."""
    from filelock import FileLock
    from sfc_vision.models import ModelConfig, build_model
    root = shared_dir(tmp_path_factory, "local_sweep")
    done = root / "result.json"
    with FileLock(str(root) + ".lock"):
        if not done.exists():
            root.mkdir(parents=True, exist_ok=True)
            bad = root / "mlp_weights.pth"
            torch.save(build_model(ModelConfig(arch="mlp"), (1, 28, 28), 10).net.state_dict(), bad)
            write_yaml(root / "base.yaml", TINY)
            write_yaml(root / "lam.yaml", {
                "name": "lam", "base": "base.yaml",
                "grid": {"sae.l1_coeff": LAMBDAS},
                "points": [{"model.weights": str(bad)}],
                "executor": {"kind": "local", "workers": 2}})
            start = time.time()
            r = run_cli("sweep", root / "lam.yaml", "--runs", root / "runs")
            done.write_text(json.dumps({"args": r.args, "returncode": r.returncode, "stdout": r.stdout,
                                        "stderr": r.stderr, "wall_s": time.time() - start}))
    res = read_json(done)
    result = subprocess.CompletedProcess(res["args"], res["returncode"], res["stdout"], res["stderr"])
    return SimpleNamespace(root=root, runs=root / "runs", sweep=root / "lam.yaml", result=result, wall_s=res["wall_s"],
                           summary=read_json(root / "runs" / "_sweeps" / "lam" / "summary.json"))


def tree(folder: Path) -> dict[str, str]:
    "Every file under `folder` by path: its SHA-256, or for a link where it points (a snapshot to compare byte for byte)."
    import hashlib
    return {p.relative_to(folder).as_posix(): (f"-> {os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}
