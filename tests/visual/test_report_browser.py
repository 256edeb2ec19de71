"""``embeval report`` in a real headless browser (issue 16, part 3): Debian's ``chromium`` and
``chromedriver`` through selenium (never downloaded: both paths given), networking off. The
report loads without console errors or failed requests, every plot and thumbnail has loaded,
the per-query table sorts, and a screenshot is not blank. The layout (issue 30) at 1400 px: the
PR plot beside the CMC plot, the verification figure at full width, no link to an empty section,
readable thumbnail captions; screenshots go to ``$EMBEVAL_SCREENSHOTS`` when set (to look at).
Skips, saying why, only where no browser is installed (``.ci/run`` installs one with apt). Slow:
a browser start and a report with bootstrap intervals."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import embeval
from embeval.uncertainty import intervals, saved_result
from embeval.visual.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    MISSING = None
except ImportError:
    MISSING = "selenium is not installed (pip install '.[test]')"
if MISSING is None and (CHROMIUM is None or DRIVER is None):
    MISSING = ("no chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver;"
               " .ci/run installs them)")
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=f"browser test skipped: {MISSING}"),
              pytest.mark.slow]
DIGITS = Path(__file__).resolve().parents[2] / "sample_data" / "digits"
WIDTH = 1400

N_QUERY, N_GALLERY = 240, 300


def _sets(root: Path) -> tuple[embeval.EmbeddingSet, embeval.EmbeddingSet]:
    """Random 16-d embeddings of 12 labels with one small image per item (one missing)."""
    rng = np.random.default_rng(0)
    imgs = root / "imgs"
    imgs.mkdir()
    centres = rng.normal(size=(12, 16))
    files = []
    for name, n in (("q", N_QUERY), ("g", N_GALLERY)):
        labels = np.arange(n) % 12
        emb = centres[labels] + 1.5 * rng.normal(size=(n, 16))
        paths = [f"{name}{i}.png" for i in range(n)]
        for i, p in enumerate(paths):
            if (name, i) != ("g", 3):  # g3.png missing: a placeholder tile
                colour = tuple(int(c) for c in rng.integers(0, 255, 3))
                Image.new("RGB", (12, 16), colour).save(imgs / p)
        files.append(embeval.save(root / f"{name}.safetensors", torch.tensor(emb, dtype=torch.float32),
                                  labels.tolist(), paths=paths, metadata={
                                      "source": str(imgs),
                                      "label_names": json.dumps([f"id <{k}>" for k in range(12)])}))
    return embeval.load(files[0]), embeval.load(files[1])


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - (driver, report)
    root = tmp_path_factory.mktemp("report")
    q, g = _sets(root)
    res = embeval.evaluate(q, g, ks=(1, 5), pr=True, device="cpu")
    ci = intervals(res, level=0.95, n_resamples=200)
    saved = saved_result("cmc", res, inputs={}, extra={"ks": [1, 5], "knn_k": None, "pr": True},
                         intervals={"ci": ci.to_json(), "options": ci.options.to_dict()})
    report = write_report(root / "report.html", saved, query=q, gallery=g, pr_curves=res.pr_curves,
                          worst=5, top=6)
    driver = _browser()
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        driver.get(report.resolve().as_uri())
        yield driver, report, res
    finally:
        driver.quit()


def _browser():  # noqa: ANN202 - a selenium WebDriver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM  # type: ignore[assignment]
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
              f"--window-size={WIDTH},1600", "--hide-scrollbars"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


@pytest.fixture(scope="module")
def verify_page(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - (driver, report)
    """The report of ``embeval verify --save-result`` on the sample digits, as the CLI writes it."""
    from embeval.cli import main

    root = tmp_path_factory.mktemp("verify-report")
    rs, html = root / "v.safetensors", root / "v.html"
    for args in (["verify", str(DIGITS / "query.safetensors"), str(DIGITS / "gallery.safetensors"),
                  "--save-result", str(rs), "--device", "cpu"], ["report", str(rs), "--out", str(html)]):
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code in (0, None)
    driver = _browser()
    try:
        driver.get(html.resolve().as_uri())
        yield driver, html
    finally:
        driver.quit()


def _box(driver, selector: str) -> dict:
    return driver.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return {left: r.left, right: r.right, top: r.top, width: r.width};", selector)


def _screenshot(driver, name: str) -> Image.Image:
    """The whole page (as tall as it is), kept in $EMBEVAL_SCREENSHOTS when set."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(max(height, 800), 6000))
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png()))
    if os.environ.get("EMBEVAL_SCREENSHOTS"):
        shot.save(Path(os.environ["EMBEVAL_SCREENSHOTS"]) / f"{name}.png")
    return shot


def test_loads_offline_without_errors_or_requests(page) -> None:
    driver, report, _ = page
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    failed = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    assert [m for m in failed if m["method"] == "Network.loadingFailed"] == []
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith("data:") for r in resources), resources
    assert driver.execute_script("return document.readyState") == "complete"


def test_every_plot_and_thumbnail_loaded(page) -> None:
    driver, _, _ = page
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.className, i.complete, i.naturalWidth,"
        " i.src.slice(0, 15)])")
    plots = [i for i in images if i[0].startswith("plot")]
    thumbs = [i for i in images if i[0] == "thumb"]
    assert len(plots) == 3 and len(thumbs) == 5  # CMC, PR, distributions; the 5 worst queries
    assert all(done and width > 0 and src.startswith("data:image/") for _, done, width, src in images)
    assert {src for *_, src in plots} == {"data:image/svg+"}


def _column(driver, index: int) -> list[str]:
    return driver.execute_script(
        f"return Array.from(document.querySelectorAll('#per-query tbody tr'))"
        f".map(r => r.cells[{index}].textContent)")


def test_per_query_table_sorts(page) -> None:
    driver, _, res = page
    headers = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#per-query thead th")]
    ap_col, query_col = headers.index("AP"), headers.index("query")
    assert len(_column(driver, 0)) == 100  # the first page; the rest on demand
    ap_header = driver.find_elements(By.CSS_SELECTOR, "#per-query thead th")[ap_col]
    ap_header.click()
    shown = [float(x) for x in _column(driver, ap_col)]
    assert shown == sorted(shown) and ap_header.get_attribute("data-sorted") == "asc"
    want = sorted(res.per_query["ap"].tolist())[:100]  # the oracle: the result's own APs
    assert np.allclose(shown, want, atol=5e-5)
    ap_header.click()  # again: descending
    shown = [float(x) for x in _column(driver, ap_col)]
    assert shown == sorted(shown, reverse=True) and shown[0] == pytest.approx(max(want), abs=1) \
        and shown[0] >= shown[-1]
    driver.find_element(By.ID, "all").click()
    assert len(_column(driver, query_col)) == N_QUERY
    queries = [int(x) for x in _column(driver, query_col)]
    assert sorted(queries) == list(range(N_QUERY))
    label = _column(driver, headers.index("label"))[0]
    assert label.startswith("id <")  # label names shown as text (escaped, not markup)


def test_screenshot_is_not_blank(page) -> None:
    driver, _, _ = page
    driver.execute_script("window.scrollTo(0, 0)")
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
    pixels = np.asarray(shot, dtype=np.float64)
    assert pixels.shape[0] > 500 and pixels.std() > 20


def test_pr_plot_sits_beside_the_cmc_plot_at_1400_px(page) -> None:
    driver, _, _ = page
    cmc, pr = _box(driver, "img[alt='CMC curve']"), _box(driver, "img[alt='precision-recall curve']")
    assert pr["top"] == pytest.approx(cmc["top"], abs=2) and pr["left"] > cmc["right"]
    assert cmc["width"] >= 340 and pr["width"] >= 340
    metrics = _box(driver, "#metrics")
    assert cmc["left"] > metrics["right"]  # beside the metrics: no half-empty row
    assert _screenshot(driver, "report-cmc").size[0] >= WIDTH - 20


def test_thumbnail_captions_are_shown_at_their_size(page) -> None:
    """The worst queries' rows are drawn with 14 px text and shown unscaled."""
    driver, _, _ = page
    sizes = driver.execute_script("return Array.from(document.querySelectorAll('img.thumb'))"
                                  ".map(i => [i.naturalWidth, i.getBoundingClientRect().width])")
    assert sizes and all(abs(natural - shown) < 1 for natural, shown in sizes)
    assert "1 worst" not in driver.page_source


def test_verify_report_figure_is_wide_and_links_only_to_what_it_has(verify_page) -> None:
    driver, _ = verify_page
    figure = _box(driver, "img[alt='ROC, DET and score distributions']")
    assert figure["width"] >= 900  # not squeezed beside the metrics (was ~560 px)
    links = [a.get_attribute("href").rpartition("#")[2]
             for a in driver.find_elements(By.CSS_SELECTOR, "nav a")]
    assert links == ["metrics", "plots", "options"]
    assert all(driver.find_elements(By.ID, anchor) for anchor in links)
    options = dict(driver.execute_script(
        "return Array.from(document.querySelectorAll('table.kv tr'))"
        ".map(r => [r.cells[0].textContent, r.cells[1].textContent])"))
    assert "ks" not in options and "knn_k" not in options and options["metric"] == "cosine"
    assert not any(v.startswith('"') for v in options.values())  # plain, not JSON-quoted
    shot = np.asarray(_screenshot(driver, "report-verify").convert("L"), dtype=np.float64)
    assert shot.std() > 20
