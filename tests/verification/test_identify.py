"""Open-set identification (embeval.verification.identify) against a float64 brute force that
applies the definition literally: every candidate threshold is scanned (DESIGN.md section 7)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from helpers.budget import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embeval
from embeval.errors import OptionError
from embeval.verification.identify import (
    accepted_nonmated,
    identification_metrics,
    identify,
    omitted_fpirs,
)

FPIRS = [1e-3, 0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.6, 0.999]


def brute_force(qe, ql, ge, gl, qc=None, gc=None, *, fpirs, ks, exclude_self=False,
                exclude_same_camera=False, rule="embeval") -> dict:
    """The definitions applied literally: full float64 inner-product matrix, one query at a time,
    then every decision score (and +inf) tried as the threshold t (accept score >= t)."""
    s = np.asarray(qe, dtype=np.float64) @ np.asarray(ge, dtype=np.float64).T
    ql, gl = np.asarray(ql), np.asarray(gl)
    mated_best, mated_rank, top1 = [], [], []
    for i in range(len(ql)):
        keep = np.ones(len(gl), dtype=bool)
        if exclude_self:
            keep[i] = False
        if exclude_same_camera and ql[i] >= 0:
            keep &= ~((gl == ql[i]) & (np.asarray(gc) == qc[i]))
        pos = keep & (gl == ql[i]) & (ql[i] >= 0)
        neg = keep & ~pos
        if pos.any():
            best = s[i][pos].max()
            mated_best.append(best)
            mated_rank.append(1 + int((s[i][neg] >= best).sum()))  # pessimistic first hit
        else:
            top1.append(s[i][keep].max() if keep.any() else -math.inf)
    n_m, n_n = len(mated_best), len(top1)
    best, rank, top1 = np.array(mated_best), np.array(mated_rank), np.array(top1)
    ks = sorted({1, *ks})
    out: dict = {}
    candidates = sorted({*best.tolist(), *top1.tolist()}) + [math.inf]
    for f in fpirs:
        if rule == "embeval":
            if n_n == 0 or 1 / n_n > f:  # not even one non-mated query may be accepted
                continue
            ok = [t for t in candidates if (top1 >= t).sum() / n_n <= f]
        else:  # insightface: accept > the max(int(N f), 1)-th highest non-mated top-1 score
            if n_n == 0:
                continue
            cut = sorted(top1.tolist(), reverse=True)[max(int(n_n * f), 1) - 1]
            ok = [t for t in candidates if t > cut]
        for k in ks:
            key = f"TPIR@FPIR={f:g}" + (f",rank{k}" if k > 1 else "")
            out[key] = (max(int(((rank <= k) & (best >= t)).sum()) for t in ok) / n_m
                        if n_m else math.nan)
        finite = [t for t in ok if t != math.inf]
        out[f"threshold@FPIR={f:g}"] = min(finite) if finite else None
    for k in ks:
        out[f"rank{k}"] = int((rank <= k).sum()) / n_m if n_m else math.nan
    out["n_mated"], out["n_nonmated"] = n_m, n_n
    return out


def same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), key
        else:
            assert x == y and type(x) is type(y) or (x == y and not isinstance(x, bool)), key


@st.composite
def cases(draw):
    self_ = draw(st.booleans())
    nq = draw(st.integers(1, 14))
    ng = nq if self_ else draw(st.integers(1, 14))
    d = draw(st.integers(1, 3))
    ints = st.integers(-2, 2)
    qe = draw(st.lists(st.lists(ints, min_size=d, max_size=d), min_size=nq, max_size=nq))
    ge = qe if self_ and draw(st.booleans()) else draw(
        st.lists(st.lists(ints, min_size=d, max_size=d), min_size=ng, max_size=ng))
    labels = st.integers(-1, 3)
    ql = draw(st.lists(labels, min_size=nq, max_size=nq))
    gl = draw(st.lists(labels, min_size=ng, max_size=ng))
    qc = draw(st.lists(st.integers(0, 1), min_size=nq, max_size=nq))
    gc = draw(st.lists(st.integers(0, 1), min_size=ng, max_size=ng))
    fpirs = draw(st.lists(st.sampled_from(FPIRS), min_size=1, max_size=4))
    ks = draw(st.lists(st.integers(1, ng), min_size=1, max_size=3))
    return dict(qe=qe, ql=ql, ge=ge, gl=gl, qc=qc, gc=gc, fpirs=fpirs, ks=ks,
                exclude_self=self_, exclude_same_camera=draw(st.booleans()),
                rule=draw(st.sampled_from(["embeval", "insightface"])),
                block_size=draw(st.sampled_from([None, 1, 3])))


def run(c: dict, **extra) -> embeval.verification.identify.IdentifyResult:
    q = embeval.EmbeddingSet(torch.tensor(c["qe"], dtype=torch.float32), c["ql"], c["qc"])
    g = embeval.EmbeddingSet(torch.tensor(c["ge"], dtype=torch.float32), c["gl"], c["gc"])
    return identify(q, g, fpirs=c["fpirs"], ks=c["ks"], fpir_rule=c["rule"], metric="inner",
                    device="cpu", exclude_self=c["exclude_self"],
                    exclude_same_camera=c["exclude_same_camera"],
                    **{"block_size": c["block_size"], **extra})


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_equals_brute_force_with_ties(c: dict) -> None:
    """Small-integer embeddings and the inner product: exact scores, heavy ties, unknown labels,
    exclusions, queries without positives, runs without non-mated (or mated) queries."""
    want = brute_force(c["qe"], c["ql"], c["ge"], c["gl"], c["qc"], c["gc"], fpirs=c["fpirs"],
                       ks=c["ks"], exclude_self=c["exclude_self"],
                       exclude_same_camera=c["exclude_same_camera"], rule=c["rule"])
    got = run(c)
    same(got.metrics, want)
    assert (got.n_mated, got.n_nonmated) == (want["n_mated"], want["n_nonmated"])


@settings(max_examples=examples(60), deadline=None)
@given(cases(), st.randoms(use_true_random=False))
def test_invariant_to_gallery_order_and_blocks(c: dict, rnd) -> None:
    if c["exclude_self"]:
        c["exclude_self"] = False  # leave-one-out pairs query i with item i: order matters
    order = list(range(len(c["ge"])))
    rnd.shuffle(order)
    shuffled = {**c, "ge": [c["ge"][i] for i in order], "gl": [c["gl"][i] for i in order],
                "gc": [c["gc"][i] for i in order]}
    base = run({**c, "block_size": None}).metrics
    same(run({**shuffled, "block_size": 2}).metrics, base)
    same(run({**c, "block_size": 1}, backend="torch").metrics, base)


def test_named_cases() -> None:
    """By hand: 3 mated queries, 4 non-mated (one with an unknown label), ties with a negative."""
    ge = [[3, 0], [0, 3], [2, 2]]
    gl = [0, 1, 2]
    qe = [[1, 0], [0, 1], [1, 1], [1, 0], [0, 2], [1, 1], [0, 0]]
    ql = [0, 1, 0, 7, 8, -1, 9]
    # mated: q0 best 3 rank 1; q1 best 3 rank 1; q2 best 3 (label 0), items 1 and 2 score 3, 4:
    # rank 3 (pessimistic: the tie with item 1 counts against it)
    # non-mated top-1: q3 3, q4 6, q5 4, q6 0 -> descending 6, 4, 3, 0
    c = dict(qe=qe, ql=ql, ge=ge, gl=gl, qc=[0] * 7, gc=[0] * 3, fpirs=[0.25, 0.5], ks=[3],
             exclude_self=False, exclude_same_camera=False, rule="embeval", block_size=None)
    m = run(c).metrics
    # f=0.25: m=1, s=4 (2nd highest): nobody's best (3) is > 4 -> 0; threshold = 6
    # f=0.5: m=2, s=3: nobody > 3 either; threshold = the smallest decision score > 3 = 4
    assert m == {"TPIR@FPIR=0.25": 0.0, "TPIR@FPIR=0.25,rank3": 0.0, "threshold@FPIR=0.25": 6.0,
                 "TPIR@FPIR=0.5": 0.0, "TPIR@FPIR=0.5,rank3": 0.0, "threshold@FPIR=0.5": 4.0,
                 "rank1": 2 / 3, "rank3": 1.0, "n_mated": 3, "n_nonmated": 4}
    ins = run({**c, "rule": "insightface"}).metrics  # s = the int(4 f)-th highest: 6, then 4
    assert ins["threshold@FPIR=0.25"] is None and ins["threshold@FPIR=0.5"] == 6.0
    c2 = {**c, "qe": [[2, 0], [0, 2], [2, 2], *qe[3:]]}  # bests 6, 6, 6 (q2 still at rank 3)
    m2 = run(c2).metrics
    assert m2["TPIR@FPIR=0.5"] == 2 / 3 and m2["TPIR@FPIR=0.5,rank3"] == 1.0
    assert m2["TPIR@FPIR=0.25"] == 2 / 3 and m2["threshold@FPIR=0.25"] == 6.0


def test_fpir_omitted_without_enough_nonmated_queries() -> None:
    c = dict(qe=[[1], [2], [1]], ql=[0, 0, 5], ge=[[1]], gl=[0], qc=[0] * 3, gc=[0],
             fpirs=[0.5, 0.999], ks=[1], exclude_self=False, exclude_same_camera=False,
             rule="embeval", block_size=None)
    m = run(c).metrics  # N = 1: f < 1 accepts no non-mated query; omitted like TAR@FAR
    assert not any(k.startswith(("TPIR", "threshold")) for k in m) and m["n_nonmated"] == 1
    m = run({**c, "ql": [0, 0, 0]}).metrics  # no non-mated query at all
    assert list(m) == ["rank1", "n_mated", "n_nonmated"] and m["n_nonmated"] == 0
    ins = run({**c, "rule": "insightface"}).metrics  # insightface omits nothing
    assert ins["TPIR@FPIR=0.5"] == 0.5 and ins["threshold@FPIR=0.999"] == 2.0  # s = 1: q1 only


def test_an_omitted_fpir_says_why() -> None:
    """Each FPIR target without a threshold is named with its reason: the smallest number of
    non-mated queries that accepts one (checked against the float rule it follows)."""
    omitted = omitted_fpirs([1e-3, 1e-2, 0.1], 47)
    assert list(omitted) == ["TPIR@FPIR=0.001", "TPIR@FPIR=0.01"]
    assert omitted["TPIR@FPIR=0.01"] == "too few non-mated queries for FPIR 0.01: 47, it needs at least 100"
    for f in (1e-3, 0.01, 0.3, 1 / 3, 0.07):
        need = int(omitted_fpirs([f], 1)[f"TPIR@FPIR={f:g}"].rpartition(" ")[2]) if f < 1 else 1
        assert accepted_nonmated(f, need) == 1 and accepted_nonmated(f, need - 1) == 0
    assert omitted_fpirs([0.5], 0) == {"TPIR@FPIR=0.5": "no non-mated queries"}
    assert omitted_fpirs([1e-3], 5, "insightface") == {}


def test_identify_json_keeps_an_omitted_row_as_null_with_its_reason(tmp_path, capsys) -> None:
    from helpers.cli import cli_run

    root = os.path.join(os.path.dirname(__file__), "..", "..", "sample_data", "digits")
    q = embeval.load(os.path.join(root, "query.safetensors"))
    labels = q.labels.clone()
    labels[:47] = -1  # 47 non-mated queries
    qf = embeval.save(tmp_path / "q.safetensors", q.embeddings, labels)
    r = cli_run(capsys, "identify", qf, os.path.join(root, "gallery.safetensors"), "--fpir", "1e-3",
                "0.1", "--json", "--device", "cpu")
    out = json.loads(r.stdout)
    assert out["metrics"]["TPIR@FPIR=0.001"] is None and out["metrics"]["TPIR@FPIR=0.1"] > 0
    assert list(out["metrics"])[:2] == ["TPIR@FPIR=0.001", "TPIR@FPIR=0.1"]
    assert out["omitted"] == {"TPIR@FPIR=0.001": "too few non-mated queries for FPIR 0.001: 47, "
                                                 "it needs at least 1000"}
    table = cli_run(capsys, "identify", qf, os.path.join(root, "gallery.safetensors"), "--fpir", "1e-3",
                    "--device", "cpu").stdout
    assert "TPIR@FPIR=0.001 │    n/a" in table and "TPIR@FPIR=0.001: n/a, too few non-mated" in table


@pytest.mark.parametrize("n", [1, 3, 7, 10, 49, 100, 1000, 12345])
@pytest.mark.parametrize("f", [1e-3, 0.01, 0.1, 1 / 3, 0.3, 0.7, 1 / 49])
def test_accepted_nonmated_is_the_float_rule(n: int, f: float) -> None:
    want = max(m for m in range(n + 1) if m / n <= f)
    assert accepted_nonmated(f, n) == want


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_fpir_outside_unit_interval(bad: float) -> None:
    q, g = embeval.EmbeddingSet(torch.eye(2), [0, 1]), embeval.EmbeddingSet(torch.eye(2), [0, 1])
    with pytest.raises(OptionError, match="fpirs"):
        identify(q, g, fpirs=[0.1, bad], ks=[1], device="cpu")
    with pytest.raises(OptionError, match="fpir_rule"):
        identify(q, g, fpir_rule="nearest", ks=[1], device="cpu")


def test_metrics_of_merged_gallery_shards_equal_whole_run() -> None:
    """Statistics of gallery shards merge exactly, so the identification metrics do too."""
    from embeval.evaluation import evaluation_stats

    gen = torch.Generator().manual_seed(5)
    q = embeval.EmbeddingSet(torch.randint(-2, 3, (40, 4), generator=gen).float(),
                             torch.randint(-1, 12, (40,), generator=gen))
    g = embeval.EmbeddingSet(torch.randint(-2, 3, (60, 4), generator=gen).float(),
                             torch.randint(-1, 8, (60,), generator=gen))
    parts = [evaluation_stats(q, g, metric="inner", device="cpu", shard=(i, 3)).stats
             for i in range(3)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    whole = identify(q, g, fpirs=[0.1, 0.25], ks=[1, 5], metric="inner", device="cpu")
    same(identification_metrics(merged, fpirs=[0.1, 0.25], ks=[1, 5]), whole.metrics)
    assert whole.metrics["n_nonmated"] > 4


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Integer embeddings (exact inner products, ties): 60 probes, about a third non-mated."""
    d = tmp_path_factory.mktemp("identify")
    gen = torch.Generator().manual_seed(11)
    qe, ge = torch.randint(-2, 3, (60, 3), generator=gen), torch.randint(-2, 3, (25, 3), generator=gen)
    ql, gl = torch.randint(-1, 12, (60,), generator=gen), torch.randint(0, 8, (25,), generator=gen)
    return {"q": embeval.save(d / "q.safetensors", qe.float(), ql),
            "g": embeval.save(d / "g.safetensors", ge.float(), gl),
            "want": brute_force(qe.tolist(), ql.tolist(), ge.tolist(), gl.tolist(),
                                fpirs=[0.05, 0.1, 0.5], ks=[1, 3])}


def test_cli_json_equals_brute_force(files: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.cli import cli_run

    res = cli_run(capsys, "identify", files["q"], files["g"], "--metric", "inner", "--fpir",
                  "0.05", "0.1", "0.5", "-k", "3", "--device", "cpu", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    # 0.05 < 1/15: no threshold; the row stays, null, and "omitted" says why (issue 30)
    assert data["metrics"].pop("TPIR@FPIR=0.05") is None
    assert data["omitted"] == {"TPIR@FPIR=0.05": "too few non-mated queries for FPIR 0.05: 15, "
                                                "it needs at least 20"}
    same(data["metrics"], files["want"])
    assert data["command"] == "identify" and data["options"]["fpir_rule"] == "embeval"
    assert data["n_valid"] == files["want"]["n_mated"] > 0 and files["want"]["n_nonmated"] == 15
    assert data["metrics"]["TPIR@FPIR=0.1,rank3"] > 0
    res = cli_run(capsys, "identify", files["q"], files["g"], "--fpir", "0.1", "1.5")
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == "embeval: error: --fpir 1.5: must be between 0 and 1 (exclusive)\n"


EXE = shutil.which("embeval")


@pytest.mark.slow
@pytest.mark.skipif(EXE is None, reason="the embeval console script is not installed")
def test_installed_command(files: dict, tmp_path) -> None:
    """Through the installed command: the table, --fpir-rule insightface in JSON, one-line errors."""
    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([EXE, "identify", files["q"], files["g"], "--metric", "inner",
                               "--device", "cpu", *map(str, args)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "COLUMNS": "120"})

    res = run("--fpir", "0.1", "0.5", "-k", "3")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert "TPIR@FPIR=0.1,rank3" in res.stdout and "threshold@FPIR=0.5" in res.stdout
    assert f"({files['want']['n_mated']} mated, {files['want']['n_nonmated']} non-mated)" in res.stdout
    res = run("--fpir", "0.05", "0.5", "--fpir-rule", "insightface", "-k", "3", "--json")
    want = brute_force(*_load(files), fpirs=[0.05, 0.5], ks=[3], rule="insightface")
    same(json.loads(res.stdout)["metrics"], want)
    res = run("--fpir", "0")
    assert (res.returncode, res.stdout, res.stderr) == (
        2, "", "embeval: error: --fpir 0: must be between 0 and 1 (exclusive)\n")


def _load(files: dict) -> tuple:
    q, g = embeval.load(files["q"]), embeval.load(files["g"])
    return (q.embeddings.tolist(), q.labels.tolist(), g.embeddings.tolist(), g.labels.tolist())


def test_relevance_lists_give_the_label_result_and_can_unmate() -> None:
    """Lists that say what the labels say give the same identification; dropping a query's
    positives from the list makes it non-mated."""
    from embeval.engine import positive_pairs

    g = torch.Generator().manual_seed(11)
    q = embeval.EmbeddingSet(torch.randint(-2, 3, (40, 6), generator=g).float(),
                             torch.randint(-1, 5, (40,), generator=g))
    gal = embeval.EmbeddingSet(torch.randint(-2, 3, (60, 6), generator=g).float(),
                               torch.randint(0, 5, (60,), generator=g))
    qi, gi = positive_pairs(q.labels, gal.labels)
    listed = embeval.Relevance.from_pairs(qi, gi, torch.ones_like(qi), n_query=40, n_gallery=60)
    kw = dict(metric="inner", device="cpu", fpirs=[0.1, 0.5], ks=[1, 3])
    by_label = embeval.identify(q, gal, **kw)
    by_list = embeval.identify(q, gal, relevance=listed, **kw)
    assert by_list.metrics == by_label.metrics
    keep = qi != qi[0]
    fewer = embeval.Relevance.from_pairs(qi[keep], gi[keep], torch.ones_like(qi[keep]),
                                         n_query=40, n_gallery=60)
    assert embeval.identify(q, gal, relevance=fewer, **kw).n_mated == by_label.n_mated - 1
