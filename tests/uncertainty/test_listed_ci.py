"""Intervals and paired tests of listed verification trials (verify --pairs), against scikit-learn
and a plain bootstrap that repeats the drawn trials."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

import embeval
from embeval.engine.trials import VerifyStats
from embeval.errors import OptionError
from embeval.uncertainty import compare, intervals, load_result, save_result, saved_result
from embeval.uncertainty.listed import ListedTrials, VerificationStatistics, verification_keys
from embeval.verification.roc import verification_metrics

FARS = (0.05, 0.2, 0.5)


def metrics_of(scores: torch.Tensor, genuine: torch.Tensor) -> dict:
    return verification_metrics(VerifyStats.from_scores(scores[genuine], scores[~genuine]), FARS)


@settings(max_examples=examples(30), deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans(), st.integers(0, 3)), min_size=2,
                max_size=40))
def test_weights_equal_repeated_trials(rows) -> None:
    scores = torch.tensor([s / 6 for s, _, _ in rows], dtype=torch.float32)  # many ties
    genuine = torch.tensor([g for _, g, _ in rows])
    weights = np.array([w for _, _, w in rows], dtype=np.float64)
    keys = verification_keys(metrics_of(scores, genuine), "step")
    stat = VerificationStatistics(ListedTrials(scores, genuine, torch.zeros(len(rows), dtype=torch.int64)),
                                  keys)
    ones = stat(np.ones((1, len(rows))))[0]
    want = metrics_of(scores, genuine)
    for k, v in zip(keys, ones):
        assert v == pytest.approx(want[k], abs=1e-12, nan_ok=True), k
    if weights.sum() == 0:
        return
    rep = torch.from_numpy(np.repeat(np.arange(len(rows)), weights.astype(int)))
    repeated = metrics_of(scores[rep], genuine[rep])
    for k, v in zip(keys, stat(weights[None])[0]):
        assert v == pytest.approx(repeated.get(k, float("nan")), abs=1e-12, nan_ok=True), k
    if genuine[rep].any() and (~genuine[rep]).any():  # the AUC is scikit-learn's
        auc = roc_auc_score(genuine[rep].numpy(), scores[rep].numpy())
        assert stat(weights[None])[0][keys.index("AUC")] == pytest.approx(auc, abs=1e-12)


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    d = tmp_path_factory.mktemp("listed")
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(120) % 20
    centres = torch.randn(20, 8, generator=g)
    a = centres[labels] + 1.2 * torch.randn(120, 8, generator=g)
    b = a + 0.8 * torch.randn(120, 8, generator=g)
    pairs = d / "pairs.csv"
    rows = [(i, (i * 7 + 3) % 120) for i in range(120)] + [(i, (i + 20) % 120) for i in range(120)]
    pairs.write_text("query,gallery\n" + "".join(f"{x},{y}\n" for x, y in rows))
    sa, sb = embeval.EmbeddingSet(a, labels), embeval.EmbeddingSet(b, labels)
    ra = embeval.verify(sa, sa, fars=(0.05, 0.2), pairs=pairs, device="cpu")
    rb = embeval.verify(sb, sb, fars=(0.05, 0.2), pairs=pairs, device="cpu")
    return {"a": ra, "b": rb, "dir": d, "rows": rows, "labels": labels}


def test_intervals_equal_a_plain_bootstrap_of_the_trials(listed) -> None:
    r = listed["a"]
    ci = intervals(r, level=0.9, n_resamples=100, seed=5)
    assert set(ci.bounds) == {"TAR@FAR=0.05", "TAR@FAR=0.2", "EER", "AUC"}
    assert ci.records == "listed trials" and "n_genuine" in ci.reasons
    scores, genuine, _ = r.listed
    rng = np.random.default_rng([5, 0])  # the documented stream: resample r = r-th draw of T
    reps = []
    for _ in range(100):
        idx = torch.from_numpy(rng.integers(0, len(scores), size=len(scores)))
        m = metrics_of(scores[idx], genuine[idx])
        reps.append([m.get(k, np.nan) for k in ("EER", "AUC")])
    lo, hi = np.nanquantile(np.array(reps), [0.05, 0.95], axis=0)
    assert ci.bounds["EER"] == pytest.approx((lo[0], hi[0]), abs=1e-12)
    assert ci.bounds["AUC"] == pytest.approx((lo[1], hi[1]), abs=1e-12)
    for k, (a, b) in ci.bounds.items():
        assert a <= r.metrics[k] <= b, k


def test_all_pairs_verify_gets_no_interval_and_says_why(listed) -> None:
    q = embeval.EmbeddingSet(torch.randn(30, 4), torch.arange(30) % 5)
    ci = intervals(embeval.verify(q, q, fars=(0.1,), exclude_self=True, device="cpu"))
    assert ci.bounds == {} and "all-pairs verification" in ci.reasons["AUC"]


def test_paired_comparison_of_listed_trials(listed, tmp_path) -> None:
    a = load_result(save_result(tmp_path / "a.safetensors", saved_result("verify", listed["a"], inputs={})))
    b = saved_result("verify", listed["b"], inputs={})
    c = compare(a, b, n_permutations=500, n_resamples=300)
    assert set(c.metrics) == {"TAR@FAR=0.05", "TAR@FAR=0.2", "EER", "AUC"}
    back = compare(b, a, n_permutations=500, n_resamples=300)
    for k, m in c.metrics.items():
        assert m.diff == pytest.approx(listed["b"].metrics[k] - listed["a"].metrics[k], abs=1e-15)
        assert back.metrics[k].diff == pytest.approx(-m.diff, abs=1e-15)
        assert back.metrics[k].p_value == m.p_value
    same = compare(a, a)
    assert all(m.diff == 0 and m.p_value == 1 for m in same.metrics.values())
    # other pairs are refused
    other = embeval.verify(embeval.EmbeddingSet(torch.randn(120, 8), listed["labels"]),
                           embeval.EmbeddingSet(torch.randn(120, 8), listed["labels"]),
                           fars=(0.05, 0.2), device="cpu")
    with pytest.raises(OptionError, match="listed trials"):
        compare(a, saved_result("verify", other, inputs={}))


def test_a_tampered_listed_trial_is_refused(listed, tmp_path) -> None:
    import json

    from safetensors.torch import load_file, save_file

    from embeval.data.safetensors_io import tensor_digest

    path = save_result(tmp_path / "a.safetensors", saved_result("verify", listed["a"], inputs={}))
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors["listed.scores"][0] += 0.5  # the attacker edits a score and re-signs the file
    meta["sha256"] = tensor_digest(tensors, prefix=meta["result"].encode("utf-8"))
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(embeval.InputFileError, match="does not follow from its listed trials"):
        load_result(path)
    assert json.loads(meta["result"])["command"] == "verify"
