"""The package's layout, read from its source: one module spells the run folder's file names, every module imports
only modules that stand below it (pipeline order: the order of the notebooks that export them), and every package a
module imports is declared in pyproject.toml."""
import ast
import re
import sys
import tomllib
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "sfc_vision"
RUN_FOLDER_MODULE = "runfolder.py"
# names of a run folder's files and folders (see nbs/12_study_runfolder.ipynb)
RUN_FILES = ("config.yaml", "status.json", "metrics.json", ".run.lock", "stage.json")
RUN_FOLDERS = ("stages", "notebooks", "figures", "features", "artifacts", "_cache")


def modules() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(PACKAGE.glob("*.py")) if p.name != "_modidx.py"}


def code_strings(source: str) -> list[tuple[int, str]]:
    "Every string constant of `source` (f-string parts included) but docstrings, with its line."
    tree = ast.parse(source)
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def path_joins(source: str) -> list[tuple[int, str]]:
    "`x / \"name\"` joins with a literal right-hand side: (line, name), where x is not a report's or figure folder's output."
    out = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and isinstance(n.right, ast.Constant) \
                and isinstance(n.right.value, str):
            left = ast.unparse(n.left)
            if not re.match(r"(out\w*|build\w*|fdir|figures_dir|runs_root|self\.runs_root)\b", left):
                out.append((n.lineno, n.right.value))
    return out


def test_only_the_run_folder_module_spells_run_file_names():
    found = []
    for name, source in modules().items():
        if name == RUN_FOLDER_MODULE:
            continue
        for line, s in code_strings(source):
            if any(f in s for f in RUN_FILES):
                found.append(f"{name}:{line}: {s!r}")
        for line, s in path_joins(source):
            if s.split("/")[0] in RUN_FOLDERS:
                found.append(f"{name}:{line}: / {s!r}")
    assert not found, "run file names spelled outside runfolder.py:\n" + "\n".join(found)
    assert all(f'"{f}"' in modules()[RUN_FOLDER_MODULE] for f in RUN_FILES + RUN_FOLDERS[:-1])


def notebook_order() -> dict[str, str]:
    "Module file -> the notebook that exports it (its position in the pipeline)."
    out = {}
    for name, source in modules().items():
        m = re.search(r"File to edit: \.\./nbs/([^\s]+)\.ipynb", source)
        if m:
            out[name] = m.group(1)
    return out


def package_imports(source: str) -> set[str]:
    "The package's modules `source` imports (`from .x import`, `from sfc_vision.x import`, `from . import x`)."
    out = set()
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.ImportFrom):
            if n.level == 1 and n.module:
                out.add(n.module.split(".")[0])
            elif n.level == 1:
                out |= {a.name for a in n.names}
            elif n.module and n.module.startswith("sfc_vision."):
                out.add(n.module.split(".")[1])
        elif isinstance(n, ast.Import):
            out |= {a.name.split(".")[1] for a in n.names if a.name.startswith("sfc_vision.")}
    return out


ENTRY_POINT = "cli.py"  # the console script stands on top of every module, although its notebook (15) precedes 16, 17


def test_every_module_imports_only_modules_below_it():
    order = notebook_order()
    order[ENTRY_POINT] = "~"  # after every notebook name
    assert "runfolder.py" in order and order["runfolder.py"] < order["cache.py"] < order["report.py"]
    upward = []
    for name, source in modules().items():
        for target in package_imports(source):
            if target == "__init__" or f"{target}.py" not in order:
                continue
            if not order[f"{target}.py"] < order[name]:  # strictly below: no cycle, no import back up
                upward.append(f"{name} ({order[name]}) imports {target} ({order[f'{target}.py']})")
    assert not upward, "\n".join(upward)


IMPORT_NAMES = {"yaml": "pyyaml", "PIL": "pillow", "bs4": "beautifulsoup4", "IPython": "ipython"}


def test_every_imported_package_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[ ;]", d)[0].lower().replace("-", "_")
                for d in project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]}
    missing = set()
    for name, source in modules().items():
        for n in ast.walk(ast.parse(source)):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else []
            for top in {x.split(".")[0] for x in names}:
                if top in sys.stdlib_module_names or top == "sfc_vision":
                    continue
                if IMPORT_NAMES.get(top, top).lower().replace("-", "_") not in declared:
                    missing.add(f"{top} ({name})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
