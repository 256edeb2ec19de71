"""How heavy is `embeval report` at 10,000 queries: file size, time to write it, and the time
headless Chromium takes to load it (Navigation Timing loadEventEnd - startTime), offline.

    python benchmarks/bench_report.py [--queries 10000] [--gallery 20000]

Synthetic embeddings (64-d, 500 labels) with small PNG images for the worst queries' thumbnails.
Needs matplotlib, selenium and the distribution's chromium + chromedriver.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import embeval
from embeval.uncertainty import intervals, saved_result
from embeval.visual.report import write_report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--gallery", type=int, default=20_000)
    ap.add_argument("--loads", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(500, 64, generator=gen)
    img = tmp / "img.png"
    Image.new("RGB", (64, 128), (90, 120, 200)).save(img)
    sets = []
    for name, n in (("q", a.queries), ("g", a.gallery)):
        labels = torch.arange(n) % 500
        emb = centres[labels] + 1.2 * torch.randn(n, 64, generator=gen)
        sets.append(embeval.load(embeval.save(tmp / f"{name}.safetensors", emb, labels,
                                              paths=["img.png"] * n, metadata={"source": str(tmp)})))
    q, g = sets
    t0 = time.perf_counter()
    res = embeval.evaluate(q, g, ks=(1, 5, 10), pr=True, device="cpu")
    ci = intervals(res, level=0.95)
    saved = saved_result("cmc", res, inputs={}, intervals={"ci": ci.to_json(),
                                                           "options": ci.options.to_dict()})
    t1 = time.perf_counter()
    page = write_report(tmp / "report.html", saved, query=q, gallery=g, pr_curves=res.pr_curves)
    t2 = time.perf_counter()
    print(f"{a.queries} queries x {a.gallery} gallery: evaluate + 95% intervals {t1 - t0:.2f}s, "
          f"report written in {t2 - t1:.2f}s, {page.stat().st_size / 1e6:.2f} MB")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        for i in range(a.loads):
            driver.get("about:blank")
            driver.get(page.as_uri())
            ms = driver.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "return [n.domContentLoadedEventEnd, n.loadEventEnd];")
            print(f"load {i + 1}: DOMContentLoaded {ms[0]:.0f} ms, load event end {ms[1]:.0f} ms")
    finally:
        driver.quit()
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
