"""A sweep through a real SLURM cluster: submitit job array, accounting, every run folder checked.

Where no cluster answers (`scontrol ping`), the fixture starts a single-node one on this machine with
the scripts in tests/slurm/ (Debian's slurm-wlm, munge, slurmdbd on MariaDB: submitit polls `sacct`,
and without accounting a job that dies is waited for forever) and stops it afterwards. It skips only
where SLURM cannot be installed (not root, no apt-get, or the packages cannot be fetched). On a real
cluster, set SFC_VISION_SLURM_TMP to a folder every node sees and SFC_VISION_SLURM_PARTITION if the
default partition will not do."""
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import LAMBDAS, TINY, read_json, write_yaml

from sfc_vision.cache import comparable_metrics, run_name
from sfc_vision.runs import STUDY_NOTEBOOKS
from sfc_vision.study_config import StudyConfig

SCRIPTS = Path(__file__).resolve().parent / "slurm"
PACKAGES = ["munge", "slurmctld", "slurmd", "slurm-client", "slurmdbd", "mariadb-server"]


def _cluster_answers() -> bool:
    return shutil.which("scontrol") is not None and subprocess.run(
        ["scontrol", "ping"], capture_output=True, text=True).stdout.count("UP") > 0


def _install_slurm() -> str | None:
    "Install the Debian packages the start script needs; return why not, or None."
    if os.name != "posix" or os.geteuid() != 0:
        return "SLURM is not running here and installing it needs root"
    if shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        return "SLURM is not running here and installing it needs Debian's apt-get"
    missing = [p for p in PACKAGES if "install ok installed" not in subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout]
    if not missing:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0:
            return f"cannot install SLURM ({' '.join(cmd[:2])} failed): {(r.stderr or r.stdout).strip()[-500:]}"
    return None


@pytest.fixture(scope="module")
def slurm():
    "A SLURM cluster to submit to: one that already answers, or a single-node one started here and stopped after."
    if _cluster_answers():
        yield {"started_here": False}
        return
    reason = _install_slurm()
    if reason:
        pytest.skip(reason)
    start = subprocess.run(["bash", str(SCRIPTS / "start_local_slurm.sh")], capture_output=True, text=True, timeout=300)
    try:
        assert start.returncode == 0, f"SLURM is installed but did not start:\n{start.stdout[-3000:]}\n{start.stderr[-3000:]}"
        yield {"started_here": True}
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop_local_slurm.sh"), "--purge"], capture_output=True, timeout=300)


def test_sweep_on_slurm(slurm, cli, local_sweep):
    root = Path(tempfile.mkdtemp(dir=os.environ.get("SFC_VISION_SLURM_TMP")))
    write_yaml(root / "base.yaml", TINY)
    executor = {"kind": "slurm", "cpus": 1, "mem_gb": 2, "time_min": 10}  # ≥ 3 min: submitit signals 90 s early
    if os.environ.get("SFC_VISION_SLURM_PARTITION"):
        executor["partition"] = os.environ["SFC_VISION_SLURM_PARTITION"]
    sweep = write_yaml(root / "lam.yaml", {"name": "lam", "base": "base.yaml", "grid": {"sae.l1_coeff": LAMBDAS},
                                           "executor": executor})
    r = cli("sweep", sweep, "--runs", root / "runs")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted job array" in r.stdout
    summary = read_json(root / "runs" / "_sweeps" / "lam" / "summary.json")
    assert summary["executor"] == "slurm" and summary["counts"] == {"complete": len(LAMBDAS)}
    array_ids = {x["job_id"].split("_")[0] for x in summary["runs"]}
    assert len(array_ids) == 1  # one job array
    array = array_ids.pop()
    for _ in range(120):  # the result file can precede the job's end in the accounting by a few seconds
        acct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State"],
                              capture_output=True, text=True).stdout.split()
        if len(acct) == len(LAMBDAS) and all(line.endswith("|COMPLETED") for line in acct):
            break
        time.sleep(0.5)
    assert len(acct) == len(LAMBDAS) and all(line.endswith("|COMPLETED") for line in acct), acct  # SLURM ran them

    local = {x["point"]["sae.l1_coeff"]: x["run"] for x in local_sweep.summary["runs"] if x["status"] == "complete"}
    for x in summary["runs"]:
        folder = root / "runs" / x["run"]
        cfg = StudyConfig.from_yaml_text((folder / "config.yaml").read_text())
        assert x["run"] == run_name(cfg) and cfg.sae.l1_coeff == x["point"]["sae.l1_coeff"]
        metrics = read_json(folder / "metrics.json")
        assert metrics["run"]["status"] == "complete"
        assert sorted(p.name for p in (folder / "notebooks").glob("*.ipynb")) == sorted(STUDY_NOTEBOOKS)
        assert (folder / "figures" / "model_training.png").exists()
        # the same configuration computed on SLURM and on local processes: the same results
        assert comparable_metrics(metrics) == comparable_metrics(read_json(local_sweep.runs / local[cfg.sae.l1_coeff] / "metrics.json"))
    shutil.rmtree(root, ignore_errors=True)
