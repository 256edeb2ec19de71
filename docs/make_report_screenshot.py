"""Regenerate docs/report.png: `embeval report` on the sample images, as headless Chromium shows it.

    python docs/make_report_screenshot.py            # writes docs/report.png

Runs from the repository root: extracts the sample images with the untrained embeval-small
(`runs/small/`, as docs/show does) unless already there, writes `runs/small/report.html`, and
screenshots it with the distribution's `chromium` + `chromedriver` through selenium
(`pip install selenium`; networking off: the report needs none).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "small"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    ap.add_argument("--width", type=int, default=1440)
    ap.add_argument("--height", type=int, default=1700)
    args = ap.parse_args()
    embeval = [sys.executable, "-m", "embeval"]
    if not (RUNS / "gallery.safetensors").is_file():
        subprocess.run([*embeval, "extract", "embeval-small", "--query", "sample_data/images/query",
                        "--gallery", "sample_data/images/gallery", "--out-dir", str(RUNS),
                        "--size", "32", "32"], cwd=ROOT, check=True)
    page = RUNS / "report.html"
    subprocess.run([*embeval, "report", str(RUNS / "query.safetensors"),
                    str(RUNS / "gallery.safetensors"), "--out", str(page), "--worst", "4",
                    "--top", "8", "-k", "1", "5", "10", "--device", "cpu",
                    "--title", "embeval report: sample images, untrained embeval-small"],
                   cwd=ROOT, check=True)
    png = screenshot(page, args.width, args.height)
    args.out.write_bytes(png)
    print(f"{args.out} ({len(png) // 1024} KiB)")


def screenshot(page: Path, width: int, height: int) -> bytes:
    """The top ``width`` × ``height`` pixels of ``page`` in headless Chromium, as a small PNG."""
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
              "--hide-scrollbars", f"--window-size={width},{height}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        driver.get(page.resolve().as_uri())
        shot = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    im = Image.open(io.BytesIO(shot)).convert("RGB").quantize(256)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


if __name__ == "__main__":
    main()
