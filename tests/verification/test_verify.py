"""embeval.verify and ``embeval verify`` against scikit-learn on the dense score list: every trial
scored in float64 numpy (exact for small-integer embeddings and the inner product), the protocol
applied literally, TAR@FAR from ``roc_curve``, AUC from ``roc_auc_score``, the EER in Fractions
on scikit-learn's points, and insightface's nearest-point procedure written out as it is."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.budget import examples
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

import embeval
from embeval.data.safetensors_io import write_safetensors
from embeval.verification import verify as verify_module

FARS = [1e-3, 0.01, 0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.6, 0.999]
NAN = math.nan

# ---------------------------------------------------------------------------------- the oracle


def dense_trials(qe, ql, qc, ge, gl, gc, *, exclude_self: bool = False,
                 exclude_same_camera: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scores [T] float64, genuine [T] bool) of every (query, gallery) trial: genuine = same
    known label; exclude_self drops pair (i, i); exclude_same_camera drops genuine pairs on one
    camera (an unknown label is an impostor to everyone, itself included)."""
    s = np.asarray(qe, dtype=np.float64) @ np.asarray(ge, dtype=np.float64).T
    scores, genuine = [], []
    for i in range(len(ql)):
        for j in range(len(gl)):
            pos = ql[i] >= 0 and ql[i] == gl[j]
            if (exclude_self and i == j) or (exclude_same_camera and pos and qc[i] == gc[j]):
                continue
            scores.append(s[i, j])
            genuine.append(pos)
    return np.array(scores, dtype=np.float64), np.array(genuine, dtype=bool)


def ref_eer(scores: np.ndarray, genuine: np.ndarray) -> tuple[float, float]:
    """(EER, EER_threshold): FPR = FNR on scikit-learn's full ROC drawn as straight segments,
    in Fractions; the threshold: the highest genuine score whose FNR ≤ EER."""
    ng, ni = int(genuine.sum()), int((~genuine).sum())
    fpr, tpr, _ = roc_curve(genuine, scores, drop_intermediate=False)
    points = [(Fraction(round(x * ni), ni), Fraction(round(y * ng), ng)) for x, y in zip(fpr, tpr)]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 >= 1 - y1:  # FPR ≥ FNR at the segment's end: the lines y = 1 - x and P0P1 meet
            a = (1 - y0 - x0) / ((x1 - x0) + (y1 - y0))
            rate = x0 + a * (x1 - x0)
            assert rate == 1 - (y0 + a * (y1 - y0))
            break
    gen = scores[genuine]
    thr = max(s for s in set(gen.tolist()) if Fraction(int((gen < s).sum()), ng) <= rate)
    return float(rate), thr


def reference(scores: np.ndarray, genuine: np.ndarray, fars: list[float],
              rule: str = "step") -> dict:
    """The metrics of the dense trials, in embeval's ``--json`` order."""
    ng, ni = int(genuine.sum()), int((~genuine).sum())
    out: dict = {}
    for f in fars:
        if ni * f < 1:  # fewer than 1/f impostors: skipped
            continue
        if ng == 0:
            out[f"TAR@FAR={f:g}"] = NAN
            if rule == "step":
                out[f"threshold@FAR={f:g}"] = NAN
        elif rule == "step":
            fpr, tpr, thr = roc_curve(genuine, scores, drop_intermediate=False)
            ok = fpr <= f
            best = tpr[ok].max()
            t = thr[ok & (tpr == best)].max()  # inf (the first point) when no genuine is accepted
            out[f"TAR@FAR={f:g}"] = float(best)
            out[f"threshold@FAR={f:g}"] = NAN if t == np.inf else float(t)
        else:  # insightface: roc_curve's default points, flipped, min over (|fpr - f|, index)
            fpr, tpr, _ = roc_curve(genuine, scores)
            fpr, tpr = np.flipud(fpr), np.flipud(tpr)
            _, i = min(zip(abs(fpr - f), range(len(fpr))))
            out[f"TAR@FAR={f:g}"] = float(tpr[i])
    if ng and ni:
        out["EER"], out["EER_threshold"] = ref_eer(scores, genuine)
        out["AUC"] = roc_auc_score(genuine, scores)
    else:
        out["EER"], out["EER_threshold"], out["AUC"] = NAN, NAN, NAN
    out["n_genuine"], out["n_impostor"] = ng, ni
    return out


def same(got: dict, want: dict) -> None:
    """Same keys in the same order; every value equal (AUC within 1e-12; nan = nan)."""
    assert list(got) == list(want)
    for key, y in want.items():
        x = got[key]
        if isinstance(y, float) and math.isnan(y):
            assert isinstance(x, float) and math.isnan(x), (key, x)
        elif key == "AUC":
            assert x == pytest.approx(y, abs=1e-12, rel=0), key
        else:
            assert x == y, (key, x, y)
            if key.startswith("n_"):
                assert type(x) is int, key


# ---------------------------------------------------------------------------------- all pairs


@st.composite
def cases(draw) -> dict:
    self_ = draw(st.booleans())
    nq = draw(st.integers(1, 12))
    ng = nq if self_ else draw(st.integers(1, 12))
    d = draw(st.integers(1, 3))
    vec = st.lists(st.integers(-2, 2), min_size=d, max_size=d)
    qe = draw(st.lists(vec, min_size=nq, max_size=nq))
    ge = qe if self_ else draw(st.lists(vec, min_size=ng, max_size=ng))
    labels = st.integers(-1, draw(st.integers(0, 3)))
    ql = draw(st.lists(labels, min_size=nq, max_size=nq))
    gl = ql if self_ else draw(st.lists(labels, min_size=ng, max_size=ng))
    cams = st.integers(0, 1)
    qc = draw(st.lists(cams, min_size=nq, max_size=nq))
    gc = qc if self_ else draw(st.lists(cams, min_size=ng, max_size=ng))
    return dict(qe=qe, ql=ql, qc=qc, ge=ge, gl=gl, gc=gc, exclude_self=self_,
                exclude_same_camera=draw(st.booleans()),
                fars=draw(st.lists(st.sampled_from(FARS), min_size=1, max_size=4, unique=True)),
                rule=draw(st.sampled_from(["step", "step", "nearest"])),
                backend=draw(st.sampled_from(["numba", "torch"])),
                block_size=draw(st.sampled_from([None, 1, 3])))


def named(qe, ql, ge, gl, fars=(0.1, 0.5), rule="step", exclude_self=False) -> dict:
    return dict(qe=qe, ql=ql, qc=[0] * len(ql), ge=ge, gl=gl, gc=[0] * len(gl),
                exclude_self=exclude_self, exclude_same_camera=False, fars=list(fars), rule=rule,
                backend="numba", block_size=None)


def run(c: dict) -> embeval.VerifyResult:
    q = embeval.EmbeddingSet(torch.tensor(c["qe"], dtype=torch.float32), c["ql"], c["qc"])
    g = (q if c["exclude_self"] else
         embeval.EmbeddingSet(torch.tensor(c["ge"], dtype=torch.float32), c["gl"], c["gc"]))
    return embeval.verify(q, g, fars=c["fars"], far_rule=c["rule"], metric="inner", device="cpu",
                          exclude_self=c["exclude_self"],
                          exclude_same_camera=c["exclude_same_camera"], backend=c["backend"],
                          block_size=c["block_size"])


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
# one genuine pair among impostors
@example(named([[1], [2]], [0, 1], [[1], [2], [0], [1]], [0, 2, 3, 2], fars=(0.2, 1 / 3)))
# no impostor: every trial genuine (nothing reported at any FAR; EER and AUC undefined)
@example(named([[1], [2]], [4, 4], [[1], [1], [2]], [4, 4, 4]))
# no genuine: unknown labels are impostors to everyone, even to themselves
@example(named([[1, 0], [0, 1]], [-1, -1], [[1, 0], [1, 1]], [-1, 0], rule="nearest"))
@example(named([[1, 0], [0, 1]], [-1, -1], [[1, 0], [1, 1]], [-1, 0]))
# every score tied
@example(named([[0]] * 3, [0, 1, 0], [[5]] * 4, [0, 0, 1, -1], fars=(0.1, 0.25, 0.5, 0.999)))
def test_all_pairs_equal_scikit_learn_on_the_dense_scores(c: dict) -> None:
    """Small-integer embeddings, inner product: exact integer scores, heavy ties, unknown labels,
    exclude_self (query set = gallery set), exclude_same_camera."""
    scores, genuine = dense_trials(c["qe"], c["ql"], c["qc"], c["ge"], c["gl"], c["gc"],
                                   exclude_self=c["exclude_self"],
                                   exclude_same_camera=c["exclude_same_camera"])
    got = run(c)
    same(got.metrics, reference(scores, genuine, c["fars"], c["rule"]))


# ---------------------------------------------------------------------------------- listed pairs


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_listed_pairs_equal_scikit_learn(tmp_path_factory: pytest.TempPathFactory,
                                         data: st.DataObject) -> None:
    """Listed trials (repeats allowed; ``same`` overriding the labels when given)."""
    d = data.draw(st.integers(1, 3))
    vec = st.lists(st.integers(-3, 3), min_size=d, max_size=d)
    qe = data.draw(st.lists(vec, min_size=1, max_size=8))
    ge = data.draw(st.lists(vec, min_size=1, max_size=8))
    ql = data.draw(st.lists(st.integers(-1, 2), min_size=len(qe), max_size=len(qe)))
    gl = data.draw(st.lists(st.integers(-1, 2), min_size=len(ge), max_size=len(ge)))
    with_same = data.draw(st.booleans())
    rows = data.draw(st.lists(st.tuples(st.integers(0, len(qe) - 1), st.integers(0, len(ge) - 1),
                                        st.integers(0, 1)), min_size=1, max_size=40))
    fars = data.draw(st.lists(st.sampled_from(FARS), min_size=1, max_size=3, unique=True))
    rule = data.draw(st.sampled_from(["step", "nearest"]))
    header = "query,gallery,same" if with_same else "query,gallery"
    text = header + "\n" + "".join(f"{a},{b}" + (f",{s}" if with_same else "") + "\n"
                                   for a, b, s in rows)
    path = write(tmp_path_factory.mktemp("pairs") / "pairs.csv", text)
    s = np.asarray(qe, dtype=np.float64) @ np.asarray(ge, dtype=np.float64).T
    scores = np.array([s[a, b] for a, b, _ in rows])
    genuine = np.array([bool(x) if with_same else ql[a] >= 0 and ql[a] == gl[b]
                        for a, b, x in rows])
    q = embeval.EmbeddingSet(torch.tensor(qe, dtype=torch.float32), ql)
    g = embeval.EmbeddingSet(torch.tensor(ge, dtype=torch.float32), gl)
    got = embeval.verify(q, g, fars=fars, far_rule=rule, pairs=path, metric="inner", device="cpu")
    same(got.metrics, reference(scores, genuine, fars, rule))


@settings(max_examples=examples(300), deadline=None)
@given(gen=st.lists(st.integers(0, 9), min_size=1, max_size=12),
       imp=st.lists(st.integers(-1, 10), min_size=1, max_size=40),
       fars=st.lists(st.sampled_from(FARS), min_size=1, max_size=4, unique=True))
@example(gen=[5, 5, 1], imp=[0, 2, 3, 3, 4, 6, 7, 8, 8, 8], fars=[0.25, 0.5])
def test_nearest_candidates_hold_the_nearest_reading_of_any_scores_with_those_counts(gen, imp, fars):
    """Saved all-pairs files keep counts, not impostor scores: ``nearest_far_candidates`` must
    hold insightface's reading (scikit-learn's points) of the scores, and its first value must be
    the reading of the scores whose impostors tie inside each run between genuine scores."""
    from embeval.engine.trials import VerifyStats
    from embeval.verification.roc import nearest_far_candidates

    g, i = np.array(gen, dtype=np.float64), np.array(imp, dtype=np.float64)
    got = nearest_far_candidates(VerifyStats.from_scores(torch.tensor(g), torch.tensor(i)), fars)
    tied = np.array([g[g < x].max(initial=-2.0) + 0.5 if not (g == x).any() else x for x in i])
    for scores, first in ((i, False), (tied, True)):
        want = reference(np.concatenate([g, scores]), np.arange(len(g) + len(i)) < len(g), fars,
                         "nearest")
        for f in fars:
            if f"TAR@FAR={f:g}" in want:
                value = want[f"TAR@FAR={f:g}"]
                assert (got[f][0] == value) if first else value in got[f], (f, value, got[f])


def test_nearest_rule_refused_above_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    q = embeval.EmbeddingSet(torch.eye(3), [0, 1, 2])
    monkeypatch.setattr(verify_module, "NEAREST_LIMIT", 8)
    with pytest.raises(embeval.OptionError, match="far_rule nearest.* 9 trials"):
        embeval.verify(q, q, fars=[0.1], far_rule="nearest", device="cpu")
    monkeypatch.setattr(verify_module, "NEAREST_LIMIT", 9)
    got = embeval.verify(q, q, fars=[0.5], far_rule="nearest", device="cpu").metrics
    assert got["TAR@FAR=0.5"] == 1.0 and "threshold@FAR=0.5" not in got


# ---------------------------------------------------------------------------------- the command


def save_raw(path: Path, emb: torch.Tensor, labels: torch.Tensor, **extra: torch.Tensor) -> Path:
    """An embedding file with extra tensors (``templates``), as test_pairs writes them."""
    with open(path, "wb") as f:
        write_safetensors(f, {"embeddings": emb, "labels": labels, **extra},
                          {"embeval.format": "1"})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Integer embeddings (exact inner products, ties) in real files; a pairs CSV; a file with
    templates (ids 10, 13, ..., one label each) and a pairs CSV naming template ids."""
    d = tmp_path_factory.mktemp("verify")
    gen = torch.Generator().manual_seed(7)
    qe, ge = torch.randint(-2, 3, (40, 3), generator=gen), torch.randint(-2, 3, (50, 3), generator=gen)
    ql, gl = torch.randint(-1, 5, (40,), generator=gen), torch.randint(0, 5, (50,), generator=gen)
    pq, pg = torch.randint(0, 40, (60,), generator=gen), torch.randint(0, 50, (60,), generator=gen)
    pairs = write(d / "pairs.csv", "query,gallery\n" + "".join(
        f"{a},{b}\n" for a, b in zip(pq.tolist(), pg.tolist())))
    tpl = 10 + 3 * (torch.arange(36) // 3)  # 12 templates of 3 items
    t_emb = torch.randn(36, 8, generator=gen)
    t_file = save_raw(d / "tpl.safetensors", t_emb, tpl // 6, templates=tpl)
    ids = sorted(set(tpl.tolist()))
    t_pairs = write(d / "tpl_pairs.csv", "query,gallery\n" + "".join(
        f"{a},{b}\n" for i, a in enumerate(ids) for b in ids[i + 1:]))
    return {"q": embeval.save(d / "q.safetensors", qe.float(), ql),
            "g": embeval.save(d / "g.safetensors", ge.float(), gl),
            "qe": qe.tolist(), "ql": ql.tolist(), "ge": ge.tolist(), "gl": gl.tolist(),
            "pairs": pairs, "pq": pq.tolist(), "pg": pg.tolist(), "tpl": t_file,
            "tpl_pairs": t_pairs, "t_emb": t_emb, "t_ids": tpl}


def json_metrics(api: dict) -> dict:
    """The API's metrics as ``--json`` writes them (nan → null)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in api.items()}


def test_cli_json_equals_the_api(files: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.cli import cli_run

    res = cli_run(capsys, "verify", files["q"], files["g"], "--metric", "inner", "--far", "0.001",
                  "0.01", "0.1", "--device", "cpu", "--json")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    data = json.loads(res.stdout)
    api = embeval.verify(embeval.load(files["q"]), embeval.load(files["g"]), metric="inner",
                         fars=[0.001, 0.01, 0.1], device="cpu")
    assert data["command"] == "verify" and data["options"]["far_rule"] == "step"
    assert data["metrics"] == json_metrics(api.metrics)
    scores, genuine = dense_trials(files["qe"], files["ql"], None, files["ge"], files["gl"], None)
    same(api.metrics, reference(scores, genuine, [0.001, 0.01, 0.1]))
    assert "TAR@FAR=0.001" in data["metrics"]  # 2000 trials: 1e-3 is reported


def test_cli_warns_when_one_file_pairs_every_item_with_itself(
        files: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.cli import cli_run

    res = cli_run(capsys, "verify", files["g"], files["g"], "--far", "0.1", "--device", "cpu")
    assert res.returncode == 0
    assert res.stderr.startswith("embeval: warning: ") and "--exclude-self" in res.stderr
    res = cli_run(capsys, "verify", files["g"], files["g"], "--exclude-self", "--far", "0.1",
                  "--device", "cpu")
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_cli_pairs_with_folds(files: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.cli import cli_run

    res = cli_run(capsys, "verify", files["q"], files["g"], "--metric", "inner", "--pairs",
                  files["pairs"], "--folds", "5", "--far", "0.1", "--device", "cpu", "--json")
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)["metrics"]
    assert list(m) == ["TAR@FAR=0.1", "threshold@FAR=0.1", "EER", "EER_threshold", "AUC",
                       "n_genuine", "n_impostor", "accuracy", "accuracy_std"]
    s = np.asarray(files["qe"], dtype=np.float64) @ np.asarray(files["ge"], dtype=np.float64).T
    scores = np.array([s[a, b] for a, b in zip(files["pq"], files["pg"])])
    genuine = np.array([files["ql"][a] >= 0 and files["ql"][a] == files["gl"][b]
                        for a, b in zip(files["pq"], files["pg"])])
    assert m["n_genuine"] + m["n_impostor"] == 60 and m["n_genuine"] == int(genuine.sum())
    assert m["AUC"] == pytest.approx(roc_auc_score(genuine, scores), abs=1e-12)
    assert 0 <= m["accuracy_std"] and 0 < m["accuracy"] <= 1


def test_cli_grid_folds_reproduce_insightface(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``verify FILE --folds 10 --fold-thresholds grid`` on unit vectors (an insightface .bin's
    layout: pairs 2p, 2p + 1): the fold accuracies of insightface's own loop on the float64
    distances (tests/verification/test_pairs.py), for the sq_euclid and cosine metrics."""
    from helpers.cli import cli_run
    from test_pairs import _insightface_folds

    gen = torch.Generator().manual_seed(16)  # a case where the two rules differ
    n = 300  # pairs
    same = torch.rand(n, generator=gen) < 0.5
    a = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen), dim=1)
    b = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen), dim=1)
    b[same] = torch.nn.functional.normalize(a[same] + 1.5 * b[same], dim=1)
    emb = torch.stack([a, b], 1).reshape(2 * n, 16)
    labels = torch.arange(2 * n) // 2 * 2
    labels[1::2] = torch.where(same, labels[0::2], labels[1::2] + 1)
    f = embeval.save(tmp_path / "pairs_file.safetensors", emb, labels)
    pairs = write(tmp_path / "pairs.csv", "query,gallery,same\n" + "".join(
        f"{2 * p},{2 * p + 1},{int(y)}\n" for p, y in enumerate(same.tolist())))
    e = emb.double().numpy()
    dist = np.sum(np.square(e[0::2] - e[1::2]), 1)
    want = _insightface_folds(dist, same.numpy(), 10)
    for metric in ("sq_euclid", "cosine"):
        res = cli_run(capsys, "verify", f, f, "--pairs", pairs, "--folds", "10", "--metric",
                      metric, "--fold-thresholds", "grid", "--device", "cpu", "--json")
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        assert data["options"]["fold_thresholds"] == "grid"
        assert data["metrics"]["accuracy"] == pytest.approx(float(np.mean(want)), abs=1e-12)
        assert data["metrics"]["accuracy_std"] == pytest.approx(float(np.std(want)), abs=1e-12)
    res = cli_run(capsys, "verify", f, f, "--pairs", pairs, "--folds", "10", "--json")
    data = json.loads(res.stdout)  # embeval's own rule picks other thresholds here
    assert data["options"]["fold_thresholds"] == "scores"
    assert data["metrics"]["accuracy"] != pytest.approx(float(np.mean(want)), abs=1e-12)


def test_cli_templates(files: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.cli import cli_run

    res = cli_run(capsys, "verify", files["tpl"], files["tpl"], "--templates", "--pairs",
                  files["tpl_pairs"], "--far", "0.1", "--device", "cpu", "--json")
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)["metrics"]
    # 12 templates, 66 pairs; labels = template // 6 → templates 10, 13 share a label, etc.
    ids = sorted(set(files["t_ids"].tolist()))
    emb = files["t_emb"].double().numpy()
    pooled = {t: emb[files["t_ids"].numpy() == t].mean(0) for t in ids}
    pooled = {t: v / np.linalg.norm(v) for t, v in pooled.items()}
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    scores = np.array([pooled[a] @ pooled[b] for a, b in pairs])
    genuine = np.array([a // 6 == b // 6 for a, b in pairs])
    assert (m["n_genuine"], m["n_impostor"]) == (int(genuine.sum()), int((~genuine).sum()))
    assert m["n_genuine"] > 0
    assert m["AUC"] == pytest.approx(roc_auc_score(genuine, scores), abs=1e-12)
    api = embeval.verify(*(2 * [embeval.load(files["tpl"])]), templates=True,
                         pairs=files["tpl_pairs"], fars=[0.1], device="cpu")
    assert m == json_metrics(api.metrics)


def read_roc(path: Path) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["fpr", "tpr", "threshold"]
    return np.array([[float(x) for x in r] for r in rows[1:]])


def test_cli_roc_csv_points_are_on_the_dense_roc(files: dict, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.cli import cli_run

    out = tmp_path / "roc.csv"
    res = cli_run(capsys, "verify", files["q"], files["g"], "--metric", "inner", "--far", "0.01",
                  "0.1", "--device", "cpu", "--roc", out, "--json")
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)["metrics"]
    roc = read_roc(out)
    fpr, tpr, thr = roc.T
    assert tuple(roc[0]) == (0.0, 0.0, math.inf)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all() and (np.diff(thr) < 0).all()
    assert tuple(roc[-1, :2]) == (1.0, 1.0)
    scores, genuine = dense_trials(files["qe"], files["ql"], None, files["ge"], files["gl"], None)
    imp, gen = scores[~genuine], scores[genuine]
    for x, y, t in roc[1:]:  # every point is the dense ROC's point at its threshold
        assert x == (imp >= t).sum() / len(imp) and y == (gen >= t).sum() / len(gen), t
    has_far_points(roc, m, (0.01, 0.1))


def has_far_points(roc: np.ndarray, m: dict, fars: tuple[float, ...]) -> None:
    """Each TAR@FAR is a row: FAR ≤ f, TPR = TAR, at the threshold reaching it (+inf, the
    first row, where no genuine trial is accepted: threshold null)."""
    fpr, tpr, thr = roc.T
    for f in fars:
        tar, t = m[f"TAR@FAR={f:g}"], m[f"threshold@FAR={f:g}"]
        t = math.inf if t is None else t
        assert tpr[fpr <= f].max() == tar, f
        assert ((fpr <= f) & (tpr == tar) & (thr == t)).any(), f


def test_cli_roc_csv_is_thinned_and_keeps_the_far_points(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.cli import cli_run

    gen = torch.Generator().manual_seed(8)
    q = embeval.save(tmp_path / "q.safetensors", torch.randn(80, 8, generator=gen),
                     torch.randint(0, 10, (80,), generator=gen))
    g = embeval.save(tmp_path / "g.safetensors", torch.randn(400, 8, generator=gen),
                     torch.randint(0, 10, (400,), generator=gen))
    out = tmp_path / "roc.csv"
    fars = [f"{x:.4g}" for x in np.logspace(-4, -0.5, 40)]  # far points left alone by luck: few
    res = cli_run(capsys, "verify", q, g, "--metric", "inner", "--far", *fars, "--device", "cpu",
                  "--roc", out, "--json")
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)["metrics"]
    roc = read_roc(out)
    assert 100 < len(roc) <= 2000 + len(fars) < m["n_genuine"]  # thinned: fewer rows than points
    fpr, tpr, thr = roc.T
    assert tuple(roc[0]) == (0.0, 0.0, math.inf) and tuple(roc[-1, :2]) == (1.0, 1.0)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all() and (np.diff(thr) < 0).all()
    has_far_points(roc, m, tuple(map(float, fars)))


def test_cli_plot_writes_a_png(files: dict, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    from helpers.cli import cli_run

    out = tmp_path / "roc.png"
    res = cli_run(capsys, "verify", files["q"], files["g"], "--metric", "inner", "--far", "0.1",
                  "--device", "cpu", "--plot", out)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def bad_inputs(files: dict, d: Path) -> list[tuple[list, str]]:
    q, g = files["q"], files["g"]
    oob = write(d / "oob.csv", "query,gallery\n0,1\n3,50\n")
    text = write(d / "text.csv", "query,gallery\n0,1\n2,3\n1,x\n")
    unknown = write(d / "unknown.csv", "query,gallery\n10,13\n10,14\n")
    return [
        ([q, g, "--pairs", oob], f"{oob}: line 3: gallery index 50 is out of range [0, 50)"),
        ([q, g, "--pairs", text], f"{text}: line 4: gallery cell 'x' is not an integer"),
        ([files["tpl"], files["tpl"], "--templates", "--pairs", unknown],
         f"{unknown}: line 3: template id 14 (gallery column) is not in"),
        ([q, g, "--far", "0"], "--far 0: must be between 0 and 1 (exclusive)"),
        ([q, g, "--far", "0.1", "1.5"], "--far 1.5: must be between 0 and 1 (exclusive)"),
        ([q, g, "--folds", "10"], "--folds: the LFW protocol splits listed trials: give --pairs too"),
        ([q, g, "--pairs", files["pairs"], "--fold-thresholds", "grid"],
         "--fold-thresholds: needs --folds (it picks each fold's threshold)"),
        ([q, g, "--pairs", oob, "--shard", "0/2"], "--pairs: not with --shard"),
        ([q, g, "--shard", "0/2", "--roc", d / "roc.csv"], "--roc: a --shard run writes only"),
        ([q, g, "--far-rule", "nearest"], "--far-rule nearest: insightface's rule reads every "
                                          "trial's score, and this run has 2,000 trials"),
    ]


def test_cli_bad_input_is_one_line(files: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.cli import cli_run

    monkeypatch.setattr(verify_module, "NEAREST_LIMIT", 1999)
    for args, message in bad_inputs(files, tmp_path):
        res = cli_run(capsys, "verify", *args, "--device", "cpu")
        assert (res.returncode, res.stdout) == (2, ""), (args, res.stderr)
        assert res.stderr.startswith("embeval: error: ") and message in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1 and res.stderr.endswith("\n"), res.stderr


EXE = shutil.which("embeval")


@pytest.mark.slow
@pytest.mark.skipif(EXE is None, reason="the embeval console script is not installed")
def test_installed_command(files: dict, tmp_path: Path) -> None:
    def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([EXE, "verify", files["q"], files["g"], "--metric", "inner",
                               "--device", "cpu", *map(str, args)], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "COLUMNS": "120"})

    res = run_cli("--far", "0.01", "0.1", "--json")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    scores, genuine = dense_trials(files["qe"], files["ql"], None, files["ge"], files["gl"], None)
    want = reference(scores, genuine, [0.01, 0.1])
    got = json.loads(res.stdout)["metrics"]
    same({k: NAN if v is None else v for k, v in got.items()}, want)
    bad = write(tmp_path / "bad.csv", "query,gallery\n0,1\n40,0\n")
    res = run_cli("--pairs", bad)
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr.startswith(f"embeval: error: {bad}: line 3: query index 40 is out of "
                                 "range [0, 40)") and res.stderr.count("\n") == 1, res.stderr
