"""Fault injection on the tiny study: damaged cache entries, failed and killed reruns, two runs at once, and
malformed input. Each fault must end in a recomputation with a notice, or a refusal that names the fix
(exit status 2 before any work), and no good result may be lost."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, cli_command, descendants, read_json, run_cli, tiny_config, tree, write_yaml

import sfc_vision.runs  # noqa: F401  (registers the stages)
from sfc_vision.artifacts import ArtifactError, load_tensors
from sfc_vision.cache import MARKER, STAGES, Study, comparable_metrics, run_folder, run_name, stage_key, verify_entry
from sfc_vision.cli import main
from sfc_vision.runfolder import run_status
from sfc_vision.runs import KERNEL_PREFIX
from sfc_vision.study_config import StudyConfig

CFG = StudyConfig.from_dict(tiny_config(run={"name": "faults"}))


def entry(root: Path, stage: str, cfg: StudyConfig = CFG) -> Path:
    return root / "_cache" / stage / stage_key(cfg, stage)


def flip(path: Path) -> Path:
    "Flip one bit in the middle of `path` (same size)."
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    return path


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def delete(path: Path) -> Path:
    path.unlink()
    return path


def files(folder: Path) -> list[Path]:
    "The files of a cache entry but its record, largest first."
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.name != MARKER), key=lambda p: -p.stat().st_size)


# ---------------------------------------------------------------------------------------------------
# damaged cache entries, in this process


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    "Every stage of the tiny study, computed once in this process: the good results faults must not lose."
    root = tmp_path_factory.mktemp("cache") / "runs"
    study = Study(CFG, root, progress=False)
    for name in STAGES:
        study.ensure(name)
    return SimpleNamespace(root=root, records=dict(study.records))


def copy_cache(cache, tmp_path) -> Path:
    "A copy of the computed cache (new paths: this process has checked none of its hashes yet)."
    root = tmp_path / "runs"
    shutil.copytree(cache.root, root, symlinks=True)
    return root


FAULTS = [  # (stage, fault, which file): every stage, every kind of damage, the files the issue names
    ("model", flip, "largest"),
    ("model", truncate, "model.json"),
    ("activations", truncate, "largest"),
    ("saes", delete, "largest"),
    ("saes", flip, "smallest"),
    ("sae_eval", flip, "largest"),
    ("attribution", flip, "largest"),
    ("attribution", delete, "smallest"),
    ("circuit", delete, "curves.json"),
    ("circuit", truncate, "largest"),
    ("mis", delete, "largest"),
    ("mis", flip, "smallest"),
]


def result(summary: dict, stage: str) -> dict:
    "A stage's summary without bookkeeping: whether each layer's SAE was trained or taken from the per-layer store."
    if stage != "saes":
        return summary
    return {layer: {k: v for k, v in s.items() if k != "trained"} for layer, s in summary.items()}


@pytest.mark.parametrize("stage,fault,which", FAULTS, ids=[f"{s}-{f.__name__}-{w}" for s, f, w in FAULTS])
def test_a_damaged_cache_entry_is_recomputed_with_a_notice_and_the_same_result(cache, tmp_path, capfd, stage, fault, which):
    root = copy_cache(cache, tmp_path)
    folder = entry(root, stage)
    candidates = files(folder)
    target = {"largest": candidates[0], "smallest": candidates[-1]}.get(which) or folder / which
    rel = target.relative_to(folder).as_posix()
    upstream_records = {u: (entry(root, u) / MARKER).read_bytes() for u in STAGES[stage].upstream}
    fault(target)

    study = Study(CFG, root, progress=False)
    record = study.ensure(stage)
    reason = study.reasons[stage]
    assert reason.startswith(f"corrupt: {rel} "), reason
    assert f"{stage}: recomputing {folder}: {reason}" in capfd.readouterr().err  # the one-line notice
    assert result(record["summary"], stage) == result(cache.records[stage]["summary"], stage)  # the same result: nothing lost
    assert verify_entry(folder, record) is None and target.exists()
    assert all(study.reasons[u] == "cached" for u in STAGES[stage].upstream)
    assert {u: (entry(root, u) / MARKER).read_bytes() for u in upstream_records} == upstream_records  # untouched
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert read_json(study.run_dir / "metrics.json")["stages"][stage]["reason"] == reason


def test_an_edited_summary_is_caught_and_never_reaches_metrics(cache, tmp_path):
    root = copy_cache(cache, tmp_path)
    marker = entry(root, "model") / MARKER
    record = read_json(marker)
    record["summary"]["accuracy"] = 0.999
    marker.write_text(json.dumps(record))
    study = Study(CFG, root, progress=False)
    study.ensure("model")
    assert study.reasons["model"] == "corrupt: stage.json changed since it was written (its content no longer matches its digest)"
    assert read_json(study.run_dir / "metrics.json")["model"]["accuracy"] == cache.records["model"]["summary"]["accuracy"] != 0.999


def test_a_file_damaged_after_its_check_is_refused_with_the_command_that_fixes_it_and_the_forced_entry_survives(cache, tmp_path):
    "A forced SAE recomputation meets a truncated activation shard: it fails naming the fix; the good SAEs stay."
    root = copy_cache(cache, tmp_path)
    Study(CFG, root, progress=False).ensure("activations")  # checked by this process…
    shard = next(p for p in files(entry(root, "activations")) if p.suffix == ".safetensors")
    flip(shard)                                             # …then damaged (same size: only its hash tells)
    saes = entry(root, "saes")
    before = {p: p.read_bytes() for p in saes.rglob("*") if p.is_file()}
    study = Study(CFG, root, force=["saes"], progress=False)
    with pytest.raises(ArtifactError) as e:
        study.ensure("saes")
    message = str(e.value)
    assert "is truncated or corrupted" in message and "deleting the file alone does not recompute it" in message
    assert f"fix: sfc-vision run {study.run_dir / 'config.yaml'} --runs {root} --force activations" in message
    assert {p: p.read_bytes() for p in saes.rglob("*") if p.is_file()} == before  # the good entry is still there
    assert not [p for p in saes.parent.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ArtifactError, match=r"--force <stage>"):
        load_tensors(shard)


# ---------------------------------------------------------------------------------------------------
# runs through the command line: two at once, a damaged entry, a failed rerun


RUN_CONFIG = tiny_config(run={"name": "faults_run", "stages": ["model"]})  # the classifier of study notebook 1 only


def _wait_for(predicate, proc, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while not predicate():
        assert proc is None or proc.poll() is None, f"the process ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    "A complete run through `sfc-vision run` (its output kept)."
    root = tmp_path_factory.mktemp("run")
    cfg_file = write_yaml(root / "cfg.yaml", RUN_CONFIG)
    runs = root / "runs"
    folder = run_folder(runs, run_name(StudyConfig.from_dict(RUN_CONFIG)))
    proc = subprocess.run(cli_command() + ["run", str(cfg_file), "--runs", str(runs)], capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", **os.environ}, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(root=root, cfg_file=cfg_file, runs=runs, folder=folder, stdout=proc.stdout, stderr=proc.stderr,
                           metrics=read_json(folder / "metrics.json"))


def test_a_second_run_of_a_running_configuration_is_refused(complete_run):
    "While a process holds a run's lock (as the process running it does), another `sfc-vision run` of it is refused."
    from filelock import FileLock
    from sfc_vision.runfolder import RUN_LOCK
    with FileLock(str(complete_run.folder / RUN_LOCK)):  # this test process plays the run under way
        r = run_cli("run", complete_run.cfg_file, "--runs", complete_run.runs)
    assert r.returncode == 2, r.stderr
    assert f"run {complete_run.folder.name} is running already (process " in r.stderr
    assert "wait for it to end, or stop that process and run again" in r.stderr
    assert read_json(complete_run.folder / "metrics.json")["run"]["status"] == "complete"  # the run was not disturbed


def test_no_kernel_warning_about_tcp(complete_run):
    assert "without encryption" not in complete_run.stderr + complete_run.stdout


def copy_run(run, tmp_path) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(run.runs, runs, symlinks=True)
    return runs


def test_a_run_over_a_damaged_entry_recomputes_it_says_so_and_matches(complete_run, tmp_path, cli):
    runs = copy_run(complete_run, tmp_path)
    cfg = StudyConfig.from_dict(RUN_CONFIG)
    target = flip(entry(runs, "model", cfg) / "model.safetensors")
    r = cli("run", complete_run.cfg_file, "--runs", runs)
    assert r.returncode == 0, r.stderr
    assert "recomputed model (corrupt: model.safetensors changed since it was written (its SHA-256 differs))" in r.stdout, r.stdout
    metrics = read_json(runs / complete_run.folder.name / "metrics.json")
    assert {s: v["reason"].split(":")[0] for s, v in metrics["stages"].items()} == {"model": "corrupt"}
    assert comparable_metrics(metrics) == comparable_metrics(complete_run.metrics)


def test_a_failed_rerun_keeps_the_complete_runs_report(complete_run, tmp_path, cli):
    "A rerun whose notebook fails (injected) keeps the earlier figures and stage notes; the failure is recorded."
    runs = copy_run(complete_run, tmp_path)
    folder = runs / complete_run.folder.name
    nbs = tmp_path / "nbs"
    shutil.copytree(REPO / "nbs" / "study", nbs / "study")
    nb_path = nbs / "study" / "01_model_saes.ipynb"
    nb = json.loads(nb_path.read_text())
    at = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c["metadata"].get("tags", [])) + 1
    nb["cells"].insert(at, {"cell_type": "code", "execution_count": None, "id": "injected-fault", "metadata": {},
                            "outputs": [], "source": ["raise RuntimeError('injected fault')"]})
    nb_path.write_text(json.dumps(nb))
    figures = {p.name: p.read_bytes() for p in (folder / "figures").iterdir()}
    notes = {p.name: p.read_bytes() for p in (folder / "stages").iterdir()}
    assert figures and notes
    r = cli("run", complete_run.cfg_file, "--runs", runs, env={"SFC_VISION_NBS": str(nbs)})
    assert r.returncode == 1
    assert "RuntimeError: injected fault" in r.stderr
    assert {p.name: p.read_bytes() for p in (folder / "figures").iterdir()} == figures
    assert {p.name: p.read_bytes() for p in (folder / "stages").iterdir()} == notes
    assert read_json(folder / "status.json")["status"] == "failed"
    assert json.loads((folder / "notebooks" / "01_model_saes.ipynb").read_text())["metadata"]["papermill"]["exception"] is True


# ---------------------------------------------------------------------------------------------------
# a sweep killed while its workers train, then rerun



def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (its new parent has not reaped it yet)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through /proc")
def test_a_killed_sweep_takes_its_workers_along_and_a_rerun_finishes_its_runs(tmp_path, cli):
    # enough epochs that the killed training cannot finish in the moment its kernel takes to notice its parent died
    base = write_yaml(tmp_path / "base.yaml", tiny_config(run={"stages": ["model"]}, train={"epochs": 12}))
    sweep = write_yaml(tmp_path / "kill.yaml", {"name": "kill", "base": base.name, "grid": {"sae.l1_coeff": [0.1, 0.3]},
                                                "executor": {"kind": "local", "workers": 2}})
    runs = tmp_path / "runs"
    proc = subprocess.Popen(cli_command() + ["sweep", str(sweep), "--runs", str(runs)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={"OMP_NUM_THREADS": "1", **os.environ}, cwd=REPO)
    _wait_for(lambda: any((runs / "_cache" / "model").glob("*/checkpoints/optim_001.json")), proc, what="a training epoch")
    below = descendants(proc.pid)
    assert below  # the workers (and their kernels)
    os.kill(proc.pid, signal.SIGKILL)  # the sweep only: its workers must follow by themselves
    proc.wait()
    deadline = time.time() + 30
    while any(_alive(p) for p in below) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in below if _alive(p)], "worker processes outlived their sweep"
    def kernel_folders():  # the killed workers' kernel folders (connection file, sockets)
        return [f for f in Path(tempfile.gettempdir()).glob(f"{KERNEL_PREFIX}*")
                if (f / "owner.pid").is_file() and (f / "owner.pid").read_text().strip() in {str(p) for p in below}]
    assert kernel_folders()  # left by the kill…
    names = [p.stem for p in (runs / "_sweeps" / "kill" / "configs").glob("*.yaml")]
    assert len(names) == 2 and {run_status(runs / n) for n in names} <= {"interrupted", "missing"}
    assert not (runs / "_sweeps" / "kill" / "summary.json").exists()

    r = cli("sweep", sweep, "--runs", runs)
    assert r.returncode == 0, r.stderr
    assert "0 complete already, 2 to run" in r.stdout
    assert not kernel_folders()  # …and gone with the next run
    summary = read_json(runs / "_sweeps" / "kill" / "summary.json")
    assert summary["counts"] == {"complete": 2}
    reasons = sorted(read_json(runs / n / "metrics.json")["stages"]["model"]["reason"] for n in names)
    assert reasons == ["cached", "incomplete"]  # the killed training resumed (by one run; the other reused it)
    for n in names:  # each log keeps the killed attempt's output, then the rerun's
        log = (runs / "_sweeps" / "kill" / "logs" / f"{n}.log").read_text()
        assert log.count("starts this run") == 2, log


# ---------------------------------------------------------------------------------------------------
# malformed input: exit status 2 before any work, one message naming the file, line or setting


def main_(*args) -> tuple[int, str, str]:
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


CONFIG_FILES = [  # (config file content, what the message says)
    (b"model: {fc: 8\n", "cfg.yaml, line 2, column 1: expected ',' or '}'"),
    (b"model:\n\tfc: 8\n", "cfg.yaml, line 2, column 1: found character '\\t' that cannot start any token; a tab is on this line: indent with spaces"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "cfg.yaml: not a text file (byte 0 is b'\\x89'); expected a YAML configuration"),
    (b"model: !!python/object/apply:os.system [echo]\n", "cfg.yaml, line 1, column 8: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    (b"sae:\n  lr: 0.1\n  lr: 0.2\n", "cfg.yaml, line 3, column 3: duplicate key 'lr' (first on line 2)"),
    (b"- 1\n- 2\n", "cfg.yaml: expected a mapping of sections"),
    (b"", "cfg.yaml: the configuration file is empty; give its settings, or leave out the file to run the embedded default"),
    (b"# settings to come\n", "cfg.yaml: the configuration file is empty"),
    (b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(b"%c: &%c [%s]\n" % (98 + i, 98 + i, b", ".join([b"*%c" % (97 + i)] * 10))
                                                        for i in range(9)),
     "cfg.yaml: refused: its aliases expand it to more than 100000 values"),
    (b"a: 1\n" + b"#" * (2 << 20), "cfg.yaml: larger than a configuration's limit of 1048576 bytes; refused"),
]


@pytest.mark.parametrize("content,message", CONFIG_FILES, ids=["syntax", "tab", "binary", "python-tag", "duplicate", "list", "empty",
                                                                 "comment-only", "billion-laughs", "too-large"])
def test_a_malformed_config_file_is_refused_naming_file_and_line(tmp_path, content, message):
    (tmp_path / "cfg.yaml").write_bytes(content)
    code, _, err = main_("run", tmp_path / "cfg.yaml", "--runs", tmp_path / "runs")
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing was written


SETTINGS = [  # (--set assignments, what the message says)
    (["sae.lr=[1"], "--set sae.lr=[1, line 1, column 3: expected ',' or ']'"),
    (["sae.l1_coeff=.nan"], "sae.l1_coeff: nan is not a finite number"),
    (["train.lr=.inf"], "train.lr: inf is not a finite number"),
    (["sae.arch=topk", "sae.k=100"], "sae.k: 100 active latents is above the SAE width of layer pool2 (16 channels × expansion 2 = 32)"),
    (["circuit.target_class=cat"], "circuit.target_class: unknown class 'cat'; valid classes: 0, 1, 2"),
    (["data.classes=['3', seven]"], "data.classes: unknown class 'seven'; valid classes: 0, 1, 2"),
    (["execution.device=cuda:7"], "execution.device: cuda:7"),
    (["mis.n_refs=100"], "mis.n_tasks·n_refs: MIS with N=4 tasks and K=100 references needs"),
    (["data.limit_train=5"], "data.limit_train: 5 keeps 0 images, of 0 of the 10 classes"),
    (["capture.layers=!!set {pool2: null}"], "tag 'tag:yaml.org,2002:set' is not allowed: only plain YAML is read"),
    (["execution.threads=100000000"], "execution.threads: 100000000 is out of range; valid: [1, 1024]"),
    (["circuit.target_faithfulness=1.5"], "circuit.target_faithfulness: 1.5 is out of range; valid: (0, 1]"),
    (["mis.pool_size=100000"], "mis.pool_size: 100000 images asked for, the train split has 1000; valid: 32 … 1000, or None (all of them)"),
    (["sae.d_in=7"], "sae.d_in: 7, but layer pool2 has 16 channels"),
    (["capture.layers=[pool2, relu3, pool2]"], "capture.layers[2]: 'pool2' names layer pool2 again (capture.layers[0])"),
    (["data.classes=['3', '5', '3']"], "data.classes[2]: class '3' is listed twice; give each class once"),
    (["data.classes=['3']"], "data.classes: ['3'] keeps 1 class; a classifier needs at least 2"),
    (["data.classes=['3', '5']", "model.num_classes=4"], "model.num_classes: 4 outputs, but the kept classes have labels up to 5"),
]


@pytest.mark.parametrize("assignments,message", SETTINGS, ids=[a[0].split("=")[0] for a, _ in SETTINGS])
def test_a_bad_setting_is_refused_before_the_first_stage(tmp_path, assignments, message):
    if "cuda:7" in message and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    base = write_yaml(tmp_path / "tiny.yaml", tiny_config())
    code, _, err = main_("run", base, "--runs", tmp_path / "runs", "--set", *assignments)
    assert code == 2 and message in err, err
    assert not (tmp_path / "runs").exists()


SWEEPS = [  # (sweep file, what the message says)
    ("grid: {sae.l1_coeff: [0.1, 1e-1]}", "grid.sae.l1_coeff: values 1 and 2 are equal (0.1 and 0.1); give each value once"),
    ("grid: {}", "grid: expected a non-empty mapping"),
    ("points: []", "points: expected a non-empty list"),
    ("", "the sweep file is empty"),
    ("grid: {sae.l1_coeff: [0.1}", "s.yaml, line 1, column 26"),
    ("name: a\nname: b\ngrid: {sae.l1_coeff: [0.1]}", "s.yaml, line 2, column 1: duplicate key 'name'"),
    ("base: bad_base.yaml\ngrid: {sae.l1_coeff: [0.1]}", "bad_base.yaml, line 1, column 15: expected ',' or ']'"),
    ("name: nul.txt\ngrid: {sae.l1_coeff: [0.1]}", "name: 'nul.txt' is not a plain label; use letters, digits and ._=+- (e.g. 'nul_.txt')"),
    ("seeds: [0, 1]\ngrid: {sae.seed: [0, 1], sae.l1_coeff: [0.1, 0.3]}", "grid.sae.seed: set by seeds: (every replicate sets"),
]


@pytest.mark.parametrize("text,message", SWEEPS, ids=["equal-values", "empty-grid", "empty-points", "empty-file",
                                                      "syntax", "duplicate", "bad-base", "reserved-name",
                                                      "seed-beside-seeds"])
def test_a_malformed_sweep_is_refused(tmp_path, text, message):
    (tmp_path / "bad_base.yaml").write_text("model: {fc: [1}\n")
    (tmp_path / "s.yaml").write_text(text)
    code, _, err = main_("sweep", tmp_path / "s.yaml", "--runs", tmp_path / "runs")
    assert code == 2 and message in err, err
    assert "<unicode string>" not in err
    assert not (tmp_path / "runs").exists()


def test_workers_zero_is_refused(tmp_path):
    (tmp_path / "s.yaml").write_text("grid: {sae.l1_coeff: [0.1]}")
    code, _, err = main_("sweep", tmp_path / "s.yaml", "--runs", tmp_path / "runs", "--workers", "0")
    assert code == 2 and "workers: 0 is out of range; valid: [1, inf]" in err, err


def test_a_runs_folder_that_cannot_be_written_is_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for args, message in [((a_file,), f"--runs {a_file}: is a file, not a folder"),
                          (("/proc/sfc_runs",), "--runs /proc/sfc_runs: cannot write in /proc")]:
        code, _, err = main_("run", "--runs", *args, "--set", "run.stages=[model]")
        assert code == 2 and message in err, err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = main_("run", "--runs", locked / "runs", "--set", "run.stages=[model]")
        assert code == 2 and f"cannot write in {locked} (Permission denied)" in err, err
    for args, message in [((a_file,), f"--runs {a_file}: is a file, not a folder"),
                          ((tmp_path / "none",), f"--runs {tmp_path / 'none'}: no such folder")]:
        code, _, err = main_("status", "--runs", *args)
        assert code == 2 and message in err, err


def test_a_windows_device_name_is_a_valid_label(tmp_path):
    cfg = StudyConfig.from_dict(tiny_config(run={"name": "nul.txt"}))
    name = run_name(cfg)
    assert name.startswith("nul_.txt-")
    assert run_folder(tmp_path, name) == tmp_path.resolve() / name


def test_the_console_script_exits_2_with_one_line(tmp_path, cli):
    (tmp_path / "cfg.yaml").write_bytes(b"\x00\x01binary")
    r = cli("run", tmp_path / "cfg.yaml", "--runs", tmp_path / "runs")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"sfc-vision run: error: {tmp_path / 'cfg.yaml'}: not a text file (byte 0 is b'\\x00'); "
                                             f"expected a YAML configuration (UTF-8 text)"]


# ---------------------------------------------------------------------------------------------------
# readers (status, report, figures): a damaged run is named and the rest is built; a path read from an index stays
# inside its folder; a rebuild killed half-way leaves the previous output whole

DAMAGES = [("config.yaml", b"\x89PNG\r\n\x1a\n\x00binary", "config.yaml is damaged: not UTF-8 text"),
           ("config.yaml", b"model: [unclosed\n", "config.yaml is damaged"),
           ("metrics.json", b'{"stages": {', "metrics.json is damaged: not JSON"),
           ("status.json", b"\x00\x01", "status.json is damaged: not JSON"),
           ("notebooks/01_model_saes.ipynb", None, "notebooks/01_model_saes.ipynb is damaged: not a readable notebook"),
           ("metrics.json", lambda b: b.replace(b'"accuracy": 0.', b'"accuracy": 1.', 1),     # a number edited by hand
            "metrics.json is damaged: edited since it was written")]


@pytest.mark.parametrize("file, content, message", DAMAGES,
                         ids=["binary_config", "bad_yaml", "metrics", "status", "notebook", "edited_metrics"])
def test_readers_name_a_damaged_run_and_build_the_rest(complete_run, tmp_path, file, content, message):
    from sfc_vision.figures import load_runs
    from sfc_vision.report import build_report
    runs = copy_run(complete_run, tmp_path)
    good, bad = complete_run.folder.name, "damaged-0123456789"
    shutil.copytree(runs / good, runs / bad, symlinks=True)
    path = runs / bad / file
    old = path.read_bytes()
    path.write_bytes(content(old) if callable(content) else content if content is not None else old[:len(old) // 2])  # None: truncated
    assert path.read_bytes() != old
    code, out, err = main_("status", "--runs", runs)
    assert code == 0 and f"run {bad}: {message}" in out, out + err
    said = []
    index = build_report(runs, tmp_path / "report", figures_dir=None, notebooks=False, log=said.append).read_text()
    assert any(f"run {bad}: {message}" in s for s in said), said
    assert f"runs/{good}/index.html" in index and f"runs/{bad}/index.html" in index
    assert (tmp_path / "report" / "runs" / good / "index.html").exists()
    said = []
    loaded = [r["name"] for r in load_runs(runs, log=said.append)]
    if file.startswith("notebooks"):  # the figures read no notebook of a run
        assert loaded == sorted([good, bad])
    else:
        assert loaded == [good] and any(f"run {bad}: {message}" in s for s in said), said


def test_an_index_entry_leading_out_of_its_folder_is_refused_and_nothing_outside_is_touched(complete_run, tmp_path):
    runs = copy_run(complete_run, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "index.json").write_text(json.dumps({"figures": [{"file": "../victim.txt", "caption": "c", "made_by": "m", "runs": []}]}))
    code, out, err = main_("figures", "--runs", runs, "--out", figs)
    assert code == 2 and "index.json: figure 1: file: '../victim.txt' leads out of" in err, err
    code, out, err = main_("report", "--runs", runs, "--out", tmp_path / "report", "--figures", figs)
    assert code == 2 and "index.json: figure 1: file: '../victim.txt' leads out of" in err, err
    assert victim.read_text() == "keep me" and not (tmp_path / "report").exists()
    assert not list(tmp_path.glob(".*build-*"))


def test_a_rebuild_killed_half_way_leaves_the_previous_report_and_figures_whole(complete_run, tmp_path, monkeypatch):
    from contextlib import contextmanager
    import matplotlib.pyplot as plt
    import sfc_vision.figures as figures
    import sfc_vision.report as report
    runs = copy_run(complete_run, tmp_path)
    out = tmp_path / "report"
    report.build_report(runs, out, figures_dir=None, notebooks=False)
    before = tree(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(report, "_run_page", killed)
        with pytest.raises(KeyboardInterrupt):
            report.build_report(runs, out, figures_dir=None, notebooks=False)
    assert tree(out) == before

    build = {"n": 0}

    @contextmanager
    def kernel(cwd, threads=1):  # stands for the analysis notebooks: each records one figure; build 2 dies in its second
        build["n"] += 1
        done = []

        def execute(nb, out_nb, parameters):
            if build["n"] == 2 and done:
                raise KeyboardInterrupt
            done.append(nb)
            fig = plt.figure()
            figures.record_figure(fig, parameters["figures_dir"], f"{nb.stem}_{build['n']}", "caption", nb.name, [])
            plt.close(fig)
        yield execute
    monkeypatch.setattr(figures, "notebook_kernel", kernel)
    figs = tmp_path / "figures"
    figures.make_figures(runs, figs, log=lambda msg: None)
    (figs / "notes.md").write_text("mine")  # made by no build: stays
    before = tree(figs)
    with pytest.raises(KeyboardInterrupt):
        figures.make_figures(runs, figs, log=lambda msg: None)
    assert tree(figs) == before and not list(tmp_path.glob(".figures.build-*"))
    figures.make_figures(runs, figs, log=lambda msg: None)
    names = {p.name for p in figs.iterdir()}
    assert "notes.md" in names and not any(n.endswith("_1.png") for n in names) and any(n.endswith("_3.png") for n in names)


# ---------------------------------------------------------------------------------------------------
# injection: what reaches a SLURM batch script is checked against what it may be, before any script is written


@pytest.mark.parametrize("setting,value", [("partition", "gpu\ntouch /tmp/pwned"), ("account", "lab;id"), ("partition", "$(id)"),
                                           ("account", "a`id`")], ids=["newline", "semicolon", "dollar", "backtick"])
def test_a_slurm_setting_that_would_run_a_command_is_refused_before_any_script_is_written(tmp_path, setting, value):
    base = write_yaml(tmp_path / "base.yaml", tiny_config(run={"stages": ["model"]}))
    sweep = write_yaml(tmp_path / "s.yaml", {"base": base.name, "grid": {"sae.l1_coeff": [0.1]},
                                             "executor": {"kind": "slurm", setting: value}})
    code, _, err = main_("sweep", sweep, "--runs", tmp_path / "runs")
    assert code == 2, err
    assert f"executor.{setting}: {value!r} is not a SLURM {setting} name; valid: letters, digits and ._-" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # no sweep folder, no batch script


def test_a_slurm_sweep_without_slurm_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch here, whatever this machine has
    base = write_yaml(tmp_path / "base.yaml", tiny_config(run={"stages": ["model"]}))
    sweep = write_yaml(tmp_path / "s.yaml", {"base": base.name, "grid": {"sae.l1_coeff": [0.1]}})
    code, _, err = main_("sweep", sweep, "--runs", tmp_path / "runs", "--executor", "slurm")
    assert code == 2 and "executor.kind: slurm needs SLURM's sbatch, and none is on PATH here" in err, err
    assert not (tmp_path / "runs").exists()
    code, _, err = main_("sweep", sweep, "--runs", tmp_path / "a$(id)" / "runs", "--executor", "slurm")
    assert code == 2 and "a SLURM batch script would run this path" in err, err


# ---------------------------------------------------------------------------------------------------
# the environment: paths, a full disk, broken weights; exit status 2 and one line, before any stage computes


def test_a_runs_path_that_cannot_be_a_folder_is_refused(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    long = tmp_path / ("x" * 300)
    cases = [(tmp_path / "loop" / "runs", "cannot be followed"), (long, "a component of 300 bytes (xxxxxxxxxxxxxxxxxxxx…); a file "
                                                                       "or folder name may have at most 255")]
    for runs, message in cases:
        for command in (("run", "--set", "run.stages=[model]"), ("status",)):
            code, _, err = main_(command[0], "--runs", runs, *command[1:])
            assert code == 2 and f"--runs {str(runs)[:60]}" in err and message in err, err
            assert len(err.strip().splitlines()) == 1


def test_a_run_folder_name_taken_by_a_file_is_refused(tmp_path):
    cfg_file = write_yaml(tmp_path / "cfg.yaml", RUN_CONFIG)
    runs = tmp_path / "runs"
    folder = run_folder(runs, run_name(StudyConfig.from_dict(RUN_CONFIG)))
    runs.mkdir()
    folder.write_text("not a folder")
    code, _, err = main_("run", cfg_file, "--runs", runs)
    assert code == 2 and f"run folder {folder}: a file has this name; move or delete it" in err, err
    assert folder.read_text() == "not a folder"


def test_a_date_is_text_and_a_tag_is_refused():
    assert StudyConfig.from_dict(tiny_config()).run.name == "tiny"
    from sfc_vision.study_config import load_config
    assert load_config(None, ["run.name=2024-01-01"]).run.name == "2024-01-01"  # YAML 1.2: no timestamps


def test_a_billion_laughs_is_refused_quickly_without_growing_memory(tmp_path):
    import tracemalloc
    text = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    (tmp_path / "laughs.yaml").write_text(text)
    tracemalloc.start()
    start = time.time()
    code, _, err = main_("run", tmp_path / "laughs.yaml", "--runs", tmp_path / "runs")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 2 and "laughs.yaml: refused: its aliases expand it to more than 100000 values" in err, err
    assert time.time() - start < 5 and peak < 50 * 2**20, (time.time() - start, peak)


@pytest.fixture
def small_disk(tmp_path):
    "A 512 KiB filesystem (tmpfs; needs the right to mount), filled to the last byte."
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        (mnt / "runs").mkdir()
        with open(mnt / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_one_line_naming_the_path_and_leaves_nothing_half_written(small_disk, tmp_path):
    cfg_file = write_yaml(tmp_path / "cfg.yaml", RUN_CONFIG)
    runs = small_disk / "runs"
    code, _, err = main_("run", cfg_file, "--runs", runs)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device; free space there, or give another --runs" in lines[0], err
    assert str(runs) in lines[0]
    assert not [p for p in runs.rglob("*") if p.name.startswith((".tmp-", ".old-")) or (p.is_file() and p.stat().st_size == 0)]


def _weights_file(path: Path, change) -> Path:
    from safetensors.torch import save_file
    from sfc_vision.models import build_model
    from sfc_vision.runs import data_facts
    cfg = StudyConfig.from_dict(RUN_CONFIG)
    facts = data_facts(cfg.data)
    state = build_model(cfg.model, facts.image_shape, len(facts.class_names)).state_dict()
    save_file({k: change(k, v) for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("kind", ["nan", "inf", "constant"])
def test_model_weights_holding_nan_inf_or_one_value_are_refused_and_nothing_is_committed(tmp_path, kind):
    value = {"nan": float("nan"), "inf": float("inf"), "constant": 0.0}[kind]
    weights = _weights_file(tmp_path / f"{kind}.safetensors", lambda k, v: torch.full_like(v, value) if k == "net.fc1.weight" else v)
    cfg_file = write_yaml(tmp_path / "cfg.yaml", {**RUN_CONFIG, "model": {**RUN_CONFIG["model"], "weights": str(weights)}})
    code, _, err = main_("run", cfg_file, "--runs", tmp_path / "runs")
    assert code == 2 and f"model.weights: {weights}: net.fc1.weight " in err and "a classifier needs finite, varied weights" in err, err
    assert not (tmp_path / "runs").exists()
    # the stage checks too (a file changed after the check, or a library user calling the stage directly): nothing committed
    from sfc_vision.config import ConfigError
    cfg = StudyConfig.from_dict({**RUN_CONFIG, "model": {**RUN_CONFIG["model"], "weights": str(weights)}})
    with pytest.raises(ConfigError, match="net.fc1.weight"):
        Study(cfg, tmp_path / "lib", progress=False).ensure("model")
    assert not list((tmp_path / "lib" / "_cache").rglob(MARKER))


# ---------------------------------------------------------------------------------------------------
# cache identity: an intact entry moved under another key is recomputed, not reused


def test_an_entry_moved_under_another_key_is_recomputed_with_a_notice(cache, tmp_path, capfd):
    root = copy_cache(cache, tmp_path)
    cfg = StudyConfig.from_dict(tiny_config(run={"name": "faults"}, sae={"l1_coeff": 1.0}))
    source, target = entry(root, "saes"), entry(root, "saes", cfg)
    assert source != target and not target.exists()
    os.replace(source, target)  # the λ of CFG's SAEs, under the key of λ 1.0
    study = Study(cfg, root, progress=False)
    record = study.ensure("saes")
    reason = study.reasons["saes"]
    assert reason.startswith(f'misplaced: stage.json records key "{source.name}", this entry\'s key needs "{target.name}"'), reason
    assert f"saes: recomputing {target}: {reason}" in capfd.readouterr().err
    assert record["key"] == target.name and record["settings"]["sae"]["l1_coeff"] == 1.0
    assert read_json(target / MARKER)["settings"]["sae"]["l1_coeff"] == 1.0
    assert study.reasons["activations"] == "cached"


# ---------------------------------------------------------------------------------------------------
# leftovers of killed computations


def test_a_killed_forced_recompute_leaves_its_temporary_folder_only_until_the_stage_is_used_again(cache, tmp_path):
    root = copy_cache(cache, tmp_path)
    folder = entry(root, "saes")
    code = ("import sys, sfc_vision.runs; from sfc_vision.cache import Study; from sfc_vision.study_config import StudyConfig; "
            "from conftest import tiny_config; "
            "Study(StudyConfig.from_dict(tiny_config(run={'name': 'faults'})), sys.argv[1], force=['saes'], progress=False).ensure('saes')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], cwd=Path(__file__).parent,
                            env={"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])})
    _wait_for(lambda: any(p.is_file() for p in folder.parent.glob(f".tmp-{folder.name}-*/**/*")), proc, what="the forced SAE training")
    proc.kill()
    proc.wait()
    assert list(folder.parent.glob(f".tmp-{folder.name}-*"))  # killed before its swap: the temporary folder stays…
    study = Study(CFG, root, progress=False)
    assert study.ensure("saes")["generation"] == cache.records["saes"]["generation"]  # …the good entry is used…
    assert study.reasons["saes"] == "cached"
    assert not list(folder.parent.glob(f".tmp-{folder.name}-*"))  # …and the leftover is gone
