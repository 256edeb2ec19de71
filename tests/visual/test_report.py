"""``embeval report`` without a browser (issue 16, part 3): the report's numbers against the
result's own, a self-contained and escaped page, the two command forms, determinism and the
one-line errors. (tests/visual/test_report_browser.py opens it in Chromium.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import cli_run

import embeval
from embeval.errors import InputFileError
from embeval.uncertainty import load_result, saved_result
from embeval.visual.figures import cmc_curve
from embeval.visual.report import cmc_from_saved, per_query_rows, report_html

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "sample_data" / "digits"
Q, G = DIGITS / "query.safetensors", DIGITS / "gallery.safetensors"
HOSTILE = "<script>alert('x')</script>"


def _sets(tmp_path: Path, n: int = 40) -> tuple[embeval.EmbeddingSet, embeval.EmbeddingSet]:
    gen = torch.Generator().manual_seed(3)
    meta = {"label_names": json.dumps([f"{HOSTILE}{k}" for k in range(5)])}
    q = embeval.save(tmp_path / "q.safetensors", torch.randn(n, 8, generator=gen),
                     torch.arange(n) % 6 - 1,  # label -1: no positive
                     paths=[f"{HOSTILE}{i}.png" for i in range(n)], metadata=meta)
    g = embeval.save(tmp_path / "g.safetensors", torch.randn(60, 8, generator=gen),
                     torch.arange(60) % 5, metadata=meta)
    return embeval.load(q), embeval.load(g)


@pytest.mark.parametrize("no_positive", ["skip", "zero"])
def test_cmc_curve_is_the_results_own(tmp_path: Path, no_positive: str) -> None:
    q, g = _sets(tmp_path)
    res = embeval.evaluate(q, g, ks=(1, 5), no_positive=no_positive, device="cpu")
    ranks, rate = cmc_from_saved(saved_result("cmc", res, inputs={}), 30)
    want_ranks, want = cmc_curve(res, 30)  # the metrics' CMC (RankStats), not per-query values
    assert ranks.tolist() == want_ranks.tolist() and np.allclose(rate, want, rtol=0, atol=1e-12)
    assert rate[0] == pytest.approx(res.metrics["rank1"], abs=1e-12)


def test_table_rows_are_the_per_query_values(tmp_path: Path) -> None:
    q, g = _sets(tmp_path)
    res = embeval.evaluate(q, g, ks=(1,), device="cpu")
    headers, rows = per_query_rows(saved_result("cmc", res, inputs={}), q.paths, g.label_names)
    assert headers[:3] == ["query", "label", "path"] and len(rows) == q.n
    ap = res.per_query["ap"].tolist()
    col = headers.index("AP")
    for i, row in enumerate(rows):
        assert row[0] == i and row[2] == q.paths[i]  # type: ignore[index]
        assert (row[col] is None) if np.isnan(ap[i]) else row[col] == pytest.approx(ap[i], rel=1e-5)
    assert rows[1][1] == f"{HOSTILE}0" and rows[0][1] == -1  # named label; unknown label as is


@pytest.mark.slow
def test_page_is_self_contained_and_escaped(tmp_path: Path) -> None:
    q, g = _sets(tmp_path)
    res = embeval.evaluate(q, g, ks=(1, 5), pr=True, device="cpu")
    text = report_html(saved_result("cmc", res, inputs={}), query=q, gallery=g,
                       pr_curves=res.pr_curves, worst=3, title=HOSTILE)
    assert HOSTILE not in text  # titles, paths and label names: text, never markup
    assert "&lt;script&gt;" in text and "\\u003cscript>alert" in text  # the table's JSON
    sources = re.findall(r"""(?:src|href)=['"]([^'"]*)['"]""", text)
    assert sources and all(s.startswith(("data:", "#")) for s in sources)
    assert not re.search(r"https?://|//cdn|@import|url\(", text)
    assert len(re.findall(r"src='data:image/(?:png|jpeg);base64,", text)) == 3  # 3 worst queries
    assert text == report_html(saved_result("cmc", res, inputs={}), query=q, gallery=g,
                               pr_curves=res.pr_curves, worst=3, title=HOSTILE)  # same bytes


def test_other_query_file_is_refused(tmp_path: Path) -> None:
    q, g = _sets(tmp_path)
    res = embeval.evaluate(q, g, ks=(1,), device="cpu")
    saved = saved_result("cmc", res, inputs={"query_items": {"n": q.n, "paths": True,
                                                            "sha256": "0" * 64}})
    with pytest.raises(InputFileError, match="q.safetensors: its labels"):
        report_html(saved, query=q, gallery=g)
    with pytest.raises(InputFileError, match="q.safetensors: has 40 items but the result ranked 60 gallery"):
        report_html(saved_result("cmc", res, inputs={}), query=q, gallery=q)


@pytest.mark.slow
def test_both_command_forms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one, two, rs = tmp_path / "a.html", tmp_path / "b.html", tmp_path / "r.safetensors"
    r = cli_run(capsys, "report", Q, G, "--out", one, "--save-result", rs, "--device", "cpu",
                "--bootstrap", "200", "--worst", "2")
    assert r.returncode == 0, r.stderr
    text = one.read_text()
    saved = load_result(rs)
    assert saved.intervals and saved.intervals["options"]["ci_level"] == 0.95  # --ci by default
    for key in ("rank1", "mAP", "maxF1"):
        lo, hi = saved.intervals["ci"][key]
        assert f"{100 * saved.metrics[key]:.2f}%" in text and f"[{100 * lo:.2f}%, {100 * hi:.2f}%]" in text
    assert text.count("class='thumb'") == 2  # digits' paths name no image file: placeholders
    assert text.count("<img class='plot") == 3 and saved.inputs["query"][0]["sha256"] in text
    # the saved file, without and with the embedding files
    assert cli_run(capsys, "report", rs, "--out", two).returncode == 0
    assert "class='thumb'" not in two.read_text() and "Precision-recall curve: not in" in two.read_text()
    r = cli_run(capsys, "report", rs, "--out", two, "--query", Q, "--gallery", G, "--worst", "2")
    assert r.returncode == 0 and two.read_text().count("class='thumb'") == 2
    # the same inputs give the same bytes
    cli_run(capsys, "report", Q, G, "--out", two, "--device", "cpu", "--bootstrap", "200",
            "--worst", "2")
    assert two.read_bytes() == one.read_bytes()


@pytest.mark.slow
def test_verify_result_has_roc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rs, out = tmp_path / "v.safetensors", tmp_path / "v.html"
    assert cli_run(capsys, "verify", Q, G, "--save-result", rs, "--device", "cpu").returncode == 0
    r = cli_run(capsys, "report", rs, "--out", out)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "alt='ROC, DET and score distributions'" in text and "n_genuine" in text


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["{rs}", "--out", "{rs}"], "refusing to overwrite an input"),
    (["{q}", "--out", "x.html"], "is not an embeval result file"),
    (["{rs}", "--out", "x.html", "--ci", "0.9"], "--ci: sets how QUERY GALLERY"),
    (["{rs}", "--out", "x.html", "--query", "{q}"], "--query, --gallery: give both"),
    (["{q}", "{g}", "--out", "x.html", "--query", "{q}", "--gallery", "{g}"], "only with a result"),
    (["{q}", "{g}", "--out", "x.html", "--no-ci", "--ci", "0.9"], "choose one"),
    (["{rs}", "--out", "x.html", "--query", "{g}", "--gallery", "{g}"], "has 482 items"),
    (["{q}", "{g}"], "--out FILE"),
])
def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                             message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rs = tmp_path / "r.safetensors"
    assert cli_run(capsys, "cmc", Q, G, "--save-result", rs, "--device", "cpu").returncode == 0
    r = cli_run(capsys, "report", *[a.format(rs=rs, q=Q, g=G) for a in args])
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()


def test_cmc_plot_runs_to_the_largest_k_asked_or_where_it_reaches_100() -> None:
    """Issue 30: the CMC plot ran to rank 50 when -k 1 5 10 was asked (flat from ~12)."""
    from embeval.visual.report import cmc_extent

    q, g = embeval.load(Q), embeval.load(G)
    res = embeval.evaluate(q, g, ks=(1, 5, 10), device="cpu")
    asked = saved_result("cmc", res, inputs={}, extra={"ks": [1, 5, 10]})
    assert cmc_extent(asked) == 10
    unknown = saved_result("cmc", res, inputs={})
    ranks, rate = cmc_from_saved(unknown, 50)
    full = int(ranks[rate >= 1.0][0]) if (rate >= 1.0).any() else 50
    assert cmc_extent(unknown) == full  # the oracle: the first rank at 100% (or the cap)
    text = report_html(asked)
    assert "CMC curve" in text and "<a href='#worst'>" in text
