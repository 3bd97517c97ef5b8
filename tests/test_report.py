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
    configs = {"complete": tiny_config(circuit={"select": "faithfulness", "target_faithfulness": 0.5}),  # both circuits
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


def test_every_circuit_node_has_a_full_page(site):
    "Both circuits drawn in full, each node linked to its page; every feature and neuron page shows ≥ 16 top images with maps, quantiles, a histogram and a feature visualisation."
    run = site["run"]["complete"]
    metrics = read_json(run / "metrics.json")
    page = site["out"] / "runs" / run.name / "index.html"
    soup = BeautifulSoup(page.read_text(), "html.parser")
    pages = {p.name for p in (page.parent / "features").glob("*.html")}
    neuron_pages = {p for p in pages if p.startswith("neuron_")}
    for anchor, files, nodes in (("sae-circuit", pages - neuron_pages, metrics["circuit"]["nodes"]),
                                 ("neuron-circuit", neuron_pages, metrics["circuit"]["neurons"]["nodes"])):
        svg = soup.select_one(f"#{anchor} svg")
        assert svg is not None and len(files) == nodes > 0
        assert {a.get("href") for a in svg.select("a.node")} == {f"features/{f}" for f in files}  # every node drawn and clickable
        assert svg.select("line.edge.out") and svg.select("circle.output")                         # the output node
    rows = soup.select("#node-table tbody tr")
    assert len(rows) == len(pages) and {r.find("a")["href"] for r in rows} == {f"features/{f}" for f in pages}
    for f in pages:
        node = BeautifulSoup((page.parent / "features" / f).read_text(), "html.parser")
        text = node.get_text()
        assert "indirect effect" in text and "Edges in" in text and node.select_one("#up")
        if "error node" in node.h1.get_text():
            assert "reconstruction error" in text and not node.select(".tile")
            continue
        tiles = node.select(".tiles .tile")
        assert len(tiles) >= 16 and all(t.select_one("img.heat")["src"].startswith("data:image/png") for t in tiles), f
        scores = [float(t.select_one(".cap span").get_text()) for t in tiles]
        assert scores == sorted(scores, reverse=True), f"{f}: top images not ranked"
        assert node.select(".quantiles .tile") and node.select_one("svg.hist") and node.select_one("figure.featvis img")
        assert "This run stored no image" not in text and node.select_one("#classes")
        assert len(node.select("table.class-effects .cbar")) == 10, f   # the effect on each of the 10 class logits
        assert ("SAE features of" in text) if f.startswith("neuron_") else ("Nearest features" in text)


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


def walk(page, index: Path, run: str):
    "index → run → circuit → hover → node page → next node → back → neuron page → back; a unit search; the edge threshold."
    page.goto(index.as_uri(), wait_until="load")
    page.click(f'a[href="runs/{run}/index.html"]')
    assert page.url.endswith(f"runs/{run}/index.html")
    node = page.locator("#sae-circuit a.node[data-thumb]").first  # a unit (an error node has no image)
    node.hover()
    card = page.locator("#hovercard")
    assert card.is_visible() and "IE" in card.inner_text() and card.locator("img").count() == 1
    href = node.get_attribute("href")
    node.click()
    assert page.url.endswith(href) and page.locator(".tiles .tile, .lead").count() > 0
    first = page.url
    if page.locator("#next").count():
        page.click("#next")
        assert page.url != first and "/features/" in page.url
        page.go_back()
    page.go_back()
    assert page.url.endswith(f"runs/{run}/index.html")
    page.locator("#neuron-circuit a.node").first.click()
    assert "/features/neuron_" in page.url and page.locator("h1").inner_text().split(",")[1].strip().startswith("neuron")
    page.go_back()
    assert page.url.endswith(f"runs/{run}/index.html")
    rows = page.locator("#node-table tbody tr")
    layer, unit = rows.nth(1).locator("td").nth(1).inner_text().split()[0], rows.nth(1).locator("td").nth(2).inner_text()
    page.fill("input.filter", f"{layer} {unit}")
    shown = [r for r in range(rows.count()) if rows.nth(r).is_visible()]
    assert shown and all(rows.nth(r).locator("td").nth(2).inner_text() == unit and
                         rows.nth(r).locator("td").nth(1).inner_text().startswith(layer) for r in shown)
    box = page.locator("#sae-circuit")
    total = int(box.inner_text().split(" edges shown")[0].split(" of ")[-1])
    box.locator("input.edge-threshold").evaluate("e => { e.value = 0; e.dispatchEvent(new Event('input')); }")
    assert int(box.locator(".edge-count").inner_text()) == total == box.locator("line.edge:not(.out):not(.weak)").count()
    sae_box, neuron_box = box.bounding_box(), page.locator("#neuron-circuit").bounding_box()
    assert neuron_box["x"] >= sae_box["x"] + sae_box["width"] - 1 and abs(neuron_box["y"] - sae_box["y"]) < 2  # beside, not below
    svg = box.locator("svg.graph")
    assert svg.bounding_box()["width"] <= sae_box["width"]                     # the whole circuit fits its half of the page
    view = lambda: [float(v) for v in svg.get_attribute("viewBox").split()]
    whole = view()
    box.locator(".zoom-in").click()
    zoomed = view()
    assert abs(zoomed[2] - whole[2] / 1.25) < 0.05 and abs(zoomed[3] - whole[3] / 1.25) < 0.05  # about the centre:
    assert abs(zoomed[0] + zoomed[2] / 2 - whole[2] / 2) < 0.05                                 # the centre stays put
    b = svg.bounding_box()
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
    page.mouse.wheel(0, -100)
    page.wait_for_function("w => parseFloat(document.querySelector('#sae-circuit svg.graph').getAttribute('viewBox').split(' ')[2]) < w",
                           arg=zoomed[2] - 0.05)
    before = view()
    page.mouse.move(b["x"] + b["width"] - 4, b["y"] + 4)               # a drag from the top-right corner pans
    page.mouse.down(); page.mouse.move(b["x"] + b["width"] - 64, b["y"] + 4, steps=4); page.mouse.up()
    panned = view()
    assert panned[0] > before[0] and panned[2] == before[2] and panned[1] == before[1]
    box.locator(".zoom-reset").click()
    assert view() == whole


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
        # a request cancelled by the next navigation (net::ERR_ABORTED) is no missing file: the crawl above checks every
        # file a page links to; what fails otherwise is a problem
        page.on("requestfailed", lambda r: r.failure != "net::ERR_ABORTED"
                and problems.append(f"{current['url']}: failed to load {r.url} ({r.failure})"))
        page.on("request", lambda r: r.url.startswith(("http:", "https:")) and problems.append(f"{current['url']}: network request {r.url}"))
        for path in pages:
            current["url"] = path.as_uri()
            page.goto(path.as_uri(), wait_until="load")
            assert page.title(), f"{path} has no title"
        run = site["run"]["complete"].name
        walk(page, site["out"] / "index.html", run)
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
