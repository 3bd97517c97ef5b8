"""The HTML report of real runs (one complete, one without the circuit stage, one failed), opened in
headless Chromium: every page loads without console errors or failed requests, every local link and
image resolves, nothing is fetched from the network, the circuit SVG's nodes link to the feature
pages, and the index's screenshot is not blank.

Needs Debian's `chromium` and the `playwright` Python package (its API drives that executable; no
browser download). Without them the test is skipped, unless SFC_VISION_REQUIRE_BROWSER=1 (the CI),
where it fails. SFC_VISION_SCREENSHOTS=DIR keeps the screenshots."""
import io
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from bs4 import BeautifulSoup
from conftest import REPO, read_json, run_cli, tiny_config, tree, write_yaml

from sfc_vision.docs import build_docs
from sfc_vision.report import build_report

LINK_ATTRS = {"a": ["href", "xlink:href"], "img": ["src"], "link": ["href"], "script": ["src"], "iframe": ["src"],
              "image": ["href", "xlink:href"], "source": ["src"]}
FETCHED = {"img", "link", "script", "iframe", "image", "source"}  # what a browser loads by itself


def chromium_executable() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def need_browser():
    "Playwright's sync API and a Chromium executable; skip without them (fail in CI)."
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    exe = chromium_executable()
    if sync_playwright is None or exe is None:
        missing = "the playwright package" if sync_playwright is None else "a chromium executable"
        if os.environ.get("SFC_VISION_REQUIRE_BROWSER"):
            pytest.fail(f"{missing} is missing: apt-get install -y chromium; pip install playwright")
        pytest.skip(f"{missing} is missing (apt-get install -y chromium; pip install playwright)")
    return sync_playwright, exe


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "Three runs made with the CLI (complete; without the circuit stage; failed), their report and the docs site in it."
    from sfc_vision.models import ModelConfig, build_model
    root = tmp_path_factory.mktemp("report")
    runs = root / "runs"
    bad = root / "mlp_weights.pth"  # weights of an MLP for the CNN: the run starts and fails in the classifier stage
    torch.save(build_model(ModelConfig(arch="mlp"), (1, 28, 28), 10).net.state_dict(), bad)
    configs = {"complete": tiny_config(),
               "no_circuit": tiny_config(run={"name": "no_circuit", "stages": ["sae_eval"]}),
               "failed": tiny_config(run={"name": "failed"}, model={"weights": str(bad)})}
    for name, cfg in configs.items():
        result = run_cli("run", write_yaml(root / f"{name}.yaml", cfg), "--runs", runs, "--quiet")
        assert (result.returncode == 0) == (name != "failed"), result.stdout + result.stderr
    out, nbs = root / "site", root / "nbs"
    nbs.mkdir()
    for nb in ("00_config.ipynb", "01_artifacts.ipynb"):  # two library notebooks: the docs' pages and navigation
        shutil.copyfile(REPO / "nbs" / nb, nbs / nb)
    docs = build_docs(out / "docs", nbs, execute=False)
    index = build_report(runs, out, figures_dir=None)
    return {"root": root, "runs": runs, "out": out, "index": index, "docs": docs,
            "run": {name: next(d for d in runs.iterdir() if d.name.startswith(name.replace("complete", "tiny")))
                    for name in configs}}


def local_target(page: Path, url: str) -> tuple[Path, str] | None:
    "The file and fragment a relative link of `page` points to; None for an external or data URL."
    parts = urlsplit(url)
    if parts.scheme in ("http", "https", "mailto", "data", "javascript") or url.startswith("//"):
        return None
    if not parts.path:  # "#anchor" on the same page
        return page, parts.fragment
    return (page.parent / unquote(parts.path)).resolve(), parts.fragment


def crawl(index: Path) -> dict[Path, BeautifulSoup]:
    "Every HTML page reachable from `index` through local links, parsed; asserts each link and image resolves."
    pages, todo, problems = {}, [index.resolve()], []
    while todo:
        page = todo.pop()
        if page in pages:
            continue
        soup = pages[page] = BeautifulSoup(page.read_text(), "html.parser")
        for tag, attrs in LINK_ATTRS.items():
            for el in soup.find_all(tag):
                for attr in attrs:
                    url = el.get(attr)
                    if not url:
                        continue
                    target = local_target(page, url)
                    if target is None:
                        if tag in FETCHED and urlsplit(url).scheme != "data":  # an inline image is no fetch
                            problems.append(f"{page.name}: <{tag} {attr}={url}> fetches from the network")
                        continue
                    path, fragment = target
                    if not path.is_file():
                        problems.append(f"{page}: <{tag} {attr}={url}> does not resolve")
                    elif path.suffix == ".html":
                        if fragment and path == page and not soup.find(id=fragment):
                            problems.append(f"{page.name}: no element with id {fragment!r}")
                        todo.append(path)
    for page, soup in pages.items():  # fragments into other pages
        for a in soup.find_all("a", href=True):
            target = local_target(page, a["href"])
            if target and target[1] and target[0] in pages and not pages[target[0]].find(id=target[1]):
                problems.append(f"{page.name}: {a['href']} points to no element")
    assert not problems, "\n".join(problems[:20])
    return pages


def test_every_page_link_and_image_resolves(site):
    pages = crawl(site["index"])
    every = {p.resolve() for p in site["out"].rglob("*.html")}
    assert set(pages) == every, f"pages no link reaches: {sorted(str(p) for p in every - set(pages))[:5]}"
    index = pages[site["index"].resolve()]
    assert index.find("a", href="docs/index.html"), "the index links to the documentation"
    assert len(list((site["out"] / "docs").glob("*.html"))) == len(site["docs"]["pages"]) + 1
    complete = site["run"]["complete"].name
    assert index.find("a", href=f"runs/{complete}/index.html")


def test_circuit_svg_nodes_link_to_feature_pages(site):
    run = site["run"]["complete"]
    metrics = read_json(run / "metrics.json")
    page = site["out"] / "runs" / run.name / "index.html"
    soup = BeautifulSoup(page.read_text(), "html.parser")
    svg = soup.select_one("div.circuit svg")
    assert svg is not None
    linked = {a.get("xlink:href") for a in svg.find_all("a")}
    features = {p.name for p in (page.parent / "features").glob("*.html")}
    assert len(features) == metrics["circuit"]["nodes"] > 0
    assert linked == {f"features/{f}" for f in features}  # every node drawn (≤ 30 per site) and clickable
    for f in features:
        text = (page.parent / "features" / f).read_text()
        assert "indirect effect" in text and "Edges in" in text


def test_partial_and_failed_runs_have_pages(site):
    out = site["out"] / "runs"
    no_circuit = (out / site["run"]["no_circuit"].name / "index.html").read_text()
    assert "The circuit stage did not run or did not finish." in no_circuit
    assert not (out / site["run"]["no_circuit"].name / "features").exists()
    failed_dir = site["run"]["failed"]
    failed = BeautifulSoup((out / failed_dir.name / "index.html").read_text(), "html.parser")
    status = read_json(failed_dir / "status.json")
    assert status["status"] == "failed" and failed.select_one(".badge.failed")
    assert status["error"].splitlines()[0] in failed.select_one(".error").get_text()
    nb = Path(status["failed_notebook"]).stem
    assert failed.select_one(".error").find("a", href=f"notebooks/{nb}.html")


def test_pages_load_in_chromium_without_errors(site):
    sync_playwright, exe = need_browser()
    shots = Path(os.environ.get("SFC_VISION_SCREENSHOTS") or site["root"] / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    pages = sorted(p.resolve() for p in site["out"].rglob("*.html"))
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        current = {}
        page.on("console", lambda m: m.type in ("error", "warning") and problems.append(f"{current['url']}: console {m.type}: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"{current['url']}: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"{current['url']}: failed to load {r.url}"))
        page.on("request", lambda r: r.url.startswith(("http:", "https:")) and problems.append(f"{current['url']}: network request {r.url}"))
        for path in pages:
            current["url"] = path.as_uri()
            page.goto(path.as_uri(), wait_until="load")
            assert page.title(), f"{path} has no title"
        run = site["run"]["complete"].name
        feature = sorted((site["out"] / "runs" / run / "features").glob("*.html"))[0]
        for name, path in (("index", site["out"] / "index.html"), ("run", site["out"] / "runs" / run / "index.html"),
                           ("feature", feature), ("docs", site["out"] / "docs" / "index.html")):
            page.goto(path.as_uri(), wait_until="load")
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        browser.close()
    assert not problems, "\n".join(problems[:20])
    import matplotlib.pyplot as plt
    img = plt.imread(io.BytesIO((shots / "index.png").read_bytes()))[..., :3]
    background = np.median(img.reshape(-1, 3), axis=0)
    differs = np.abs(img - background).sum(-1) > 0.1
    assert differs.mean() > 0.02, f"the index's screenshot is nearly blank ({differs.mean():.1%} of pixels differ from the background)"
    assert len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 20



def test_reading_finished_runs_leaves_every_file_byte_identical(site, tmp_path):
    "RunFolder, the report, the figures (the analysis notebooks) and `status` read the runs; not a byte of them changes."
    from sfc_vision.figures import load_runs, make_figures
    from sfc_vision.runfolder import RunFolder, list_runs
    runs = site["runs"]
    before = {d.name: tree(d) for d in runs.iterdir() if d.name != "_analysis"}  # _analysis: the figures' own notebooks
    for run in list_runs(runs):
        run.summary(), run.config, run.notes(), [run.read_notebook(nb) for nb in run.notebooks()]
        if run.stage_entry("circuit"):
            run.outputs.circuit(), run.outputs.sae_records()
    build_report(runs, tmp_path / "report", figures_dir=None, notebooks=True)
    assert load_runs(runs)
    results = make_figures(runs, tmp_path / "figures", log=lambda msg: None)
    assert set(results.values()) == {"ok"}, results
    assert run_cli("status", "--runs", runs).returncode == 0
    after = {d.name: tree(d) for d in runs.iterdir() if d.name != "_analysis"}
    assert after == before
    assert (tmp_path / "figures" / "index.json").exists() and not list(tmp_path.glob(".figures.build-*"))
