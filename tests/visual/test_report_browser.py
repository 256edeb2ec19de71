"""``embeval report`` in a real headless browser (issue 16, part 3): Debian's ``chromium`` and
``chromedriver`` through selenium (never downloaded: both paths given), networking off. The
report loads without console errors or failed requests, every plot and thumbnail has loaded,
the per-query table sorts, and a screenshot is not blank. Skips, saying why, only where no
browser is installed (``.ci/run`` installs one with apt)."""

from __future__ import annotations

import io
import json
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
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"browser test skipped: {MISSING}")

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
    saved = saved_result("cmc", res, inputs={}, intervals={"ci": ci.to_json(),
                                                           "options": ci.options.to_dict()})
    report = write_report(root / "report.html", saved, query=q, gallery=g, pr_curves=res.pr_curves,
                          worst=5, top=6)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM  # type: ignore[assignment]
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
              "--window-size=1280,1600"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        driver.get(report.resolve().as_uri())
        yield driver, report, res
    finally:
        driver.quit()


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
