"""Result files (embeval.uncertainty.saved): a real file round trip for every result kind, and
damaged or edited files refused with an InputFileError naming the file (even when the editor
recomputed the digest: the per-query terms must still give the metrics)."""

from __future__ import annotations

import errno
import json
import math
import os
import stat

import numpy as np
import pytest
import torch
from helpers.data import sets
from safetensors.torch import load_file, save_file

import embeval
from embeval.data.safetensors_io import tensor_digest, write_safetensors
from embeval.errors import InputFileError
from embeval.uncertainty import intervals, load_result, save_result, saved_result
from embeval.uncertainty import saved as saved_module
from embeval.verification.identify import identify
from embeval.verification.verify import verify


@pytest.fixture(scope="module")
def data():
    q, g = sets(nq=40, ng=90, d=8, classes=8, seed=1)
    labels = torch.where(q.labels % 4 == 0, 100 + q.labels, q.labels)  # non-mated queries
    return embeval.EmbeddingSet(q.embeddings, labels, q.cameras), g


@pytest.fixture(scope="module")
def results(data):
    q, g = data
    ev = embeval.evaluate(q, g, ks=(1, 5), knn_k=3, pr=True, device="cpu")
    ci = intervals(ev, n_resamples=50)
    return {
        "cmc": saved_result("cmc", ev, inputs={"query": {"path": "q.safetensors"}},
                            extra={"note": "x"}, intervals={"ci": ci.to_json(),
                                                            "options": ci.options.to_dict()}),
        "identify": saved_result("identify", identify(q, g, fpirs=[0.1, 0.5], ks=[1, 3],
                                                      device="cpu"), inputs={}),
        "verify": saved_result("verify", verify(q, g, device="cpu"), inputs={}),
        "nearest": saved_result("verify", verify(q, g, far_rule="nearest", device="cpu"), inputs={}),
    }


def same_value(x, y) -> bool:
    if isinstance(x, torch.Tensor):  # bit for bit, nan where nan
        if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape):
            return False
        if not x.is_floating_point():
            return torch.equal(x, y)
        nan = torch.isnan(x)
        return torch.equal(nan, torch.isnan(y)) and torch.equal(x[~nan], y[~nan])
    if isinstance(x, float) and math.isnan(x):
        return isinstance(y, float) and math.isnan(y)
    if isinstance(x, dict):
        return isinstance(y, dict) and list(x) == list(y) and all(same_value(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(map(same_value, x, y))
    return x == y


@pytest.mark.parametrize("kind", ["cmc", "identify", "verify"])
def test_round_trip_keeps_every_field(results, tmp_path, kind):
    s = results[kind]
    path = save_result(tmp_path / f"{kind}.result", s)
    back = load_result(path)
    assert back.path == path
    for name in ("command", "metrics", "options", "inputs", "n_query", "n_gallery", "extra",
                 "intervals", "query_labels"):
        assert same_value(getattr(s, name), getattr(back, name)), name  # metrics: in order
    for name in ("per_query", "trials"):  # tensors by name (a safetensors file sorts them)
        x, y = getattr(s, name) or {}, getattr(back, name) or {}
        assert sorted(x) == sorted(y) and all(same_value(x[k], y[k]) for k in x), name
    assert list(back.terms) == list(s.terms)
    for k in s.terms:
        assert same_value(s.terms[k].values, back.terms[k].values)
        assert same_value(s.terms[k].include, back.terms[k].include)
    assert (s.openset is None) == (back.openset is None)
    if s.openset is not None:
        for x, y in zip(s.openset, back.openset):
            assert torch.equal(x, y)
    # what each kind must hold
    assert bool(back.terms) == (kind != "verify") and (back.trials is not None) == (kind == "verify")
    assert (back.openset is not None) == (kind == "identify")
    assert save_result(tmp_path / "again.result", back).read_bytes() == path.read_bytes()


def written(tmp_path, results, kind="cmc"):
    return save_result(tmp_path / "r.result", results[kind])


def refused(path, match: str) -> None:
    with pytest.raises(InputFileError, match=match) as e:
        load_result(path)
    assert str(path) in str(e.value)


def rewrite(path, edit_meta, edit_tensors=lambda t: None, *, new_digest: bool) -> None:
    """Rewrite ``path`` with edited metadata / tensors, recomputing the digest or not."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    tensors = {k: v.clone() for k, v in load_file(path).items()}  # not mmapped: rewritten
    edit_tensors(tensors)
    header = json.loads(meta["result"])
    edit_meta(header)
    meta["result"] = json.dumps(header, separators=(",", ":"))
    if new_digest:
        meta["sha256"] = tensor_digest(tensors, prefix=meta["result"].encode("utf-8"))
    with open(path, "wb") as f:
        write_safetensors(f, tensors, meta)


def test_a_flipped_data_byte_is_refused(tmp_path, results):
    path = written(tmp_path, results)
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    raw[8 + n + (len(raw) - 8 - n) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    refused(path, "checksum")


def test_a_truncated_file_is_refused(tmp_path, results):
    path = written(tmp_path, results)
    path.write_bytes(path.read_bytes()[:-9])
    refused(path, "not a readable safetensors file")


def test_edited_metadata_is_refused(tmp_path, results):
    path = written(tmp_path, results)

    def edit(h):
        h["metrics"]["mAP"] = 0.99

    rewrite(path, edit, new_digest=False)
    refused(path, "checksum")


@pytest.mark.parametrize("key", ["mAP", "rank1", "hard_neg"])
def test_an_edited_metric_with_a_new_digest_is_refused(tmp_path, results, key):
    path = written(tmp_path, results)

    def edit(h):
        h["metrics"][key] += 0.01

    rewrite(path, edit, new_digest=True)
    refused(path, f"metric {key} .* does not follow from its per-query values")


def test_an_edited_tpir_with_a_new_digest_is_refused(tmp_path, results):
    path = written(tmp_path, results, "identify")

    def edit(h):
        h["metrics"]["TPIR@FPIR=0.5"] = 1.0 if h["metrics"]["TPIR@FPIR=0.5"] < 1 else 0.0

    rewrite(path, edit, new_digest=True)
    refused(path, "TPIR@FPIR=0.5 .* per-query records")


def test_the_nearest_rule_file_loads_with_its_tar_values(tmp_path, results):
    back = load_result(written(tmp_path, results, "nearest"))
    assert back.options["far_rule"] == "nearest" and back.metrics == results["nearest"].metrics
    assert not [k for k in back.metrics if k.startswith("threshold@FAR=")]


@pytest.mark.parametrize("key", ["TAR@FAR=0.1", "TAR@FAR=0.01"])
def test_an_edited_nearest_tar_with_a_new_digest_is_refused(tmp_path, results, key):
    """The counts do not fix the nearest point, but they fix the TPRs it can have: k / n_genuine
    for some k; a value half a genuine trial away is none of them."""
    path = written(tmp_path, results, "nearest")
    ng = results["nearest"].metrics["n_genuine"]

    def edit(h):
        v = h["metrics"][key]
        h["metrics"][key] = v - 0.5 / ng if v > 0.5 else v + 0.5 / ng

    rewrite(path, edit, new_digest=True)
    refused(path, f"metric {key} = .* does not follow from its trial counts")


@pytest.mark.parametrize(("kind", "key"), [("nearest", "threshold@FAR=0.1"),
                                           ("verify", "TAR@FAR=1e-06"), ("nearest", "TAR@FAR=1e-06")])
def test_a_far_key_the_counts_do_not_give_is_refused(tmp_path, results, kind, key):
    path = written(tmp_path, results, kind)

    def edit(h):
        h["metrics"][key] = 0.5

    rewrite(path, edit, new_digest=True)
    refused(path, f"metric {key} is not one its trial counts give")


def ranking_file(tmp_path, q, g, **options):
    ev = embeval.evaluate(q, g, ks=(1,), device="cpu", **options)
    return save_result(tmp_path / "ranking.result", saved_result("cmc", ev, inputs={}))


def set_gallery(n: int):  # noqa: ANN201
    def edit(h):
        h["n_gallery"] = n
    return edit


def test_exclude_self_pins_n_gallery_to_the_query_count(tmp_path, data):
    """The ranks bound n_gallery from below only; leave-one-out ranks the query set against
    itself, so a larger n_gallery cannot be right."""
    q, _ = data
    path = ranking_file(tmp_path, q, q, exclude_self=True)
    assert load_result(path).n_gallery == q.n
    rewrite(path, set_gallery(q.n + 1), new_digest=True)
    refused(path, f"n_gallery {q.n + 1} does not agree with exclude_self")


def test_a_query_without_negatives_pins_n_gallery_to_its_positives(tmp_path):
    g = embeval.EmbeddingSet(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)),
                             [0, 0, 0, 0, 0], [0, 0, 1, 1, 1])
    q = embeval.EmbeddingSet(g.embeddings[:3] + 0.1, [0, 1, -1], [0, 1, 0])
    path = ranking_file(tmp_path, q, g)
    assert load_result(path).n_gallery == 5
    rewrite(path, set_gallery(6), new_digest=True)
    refused(path, "n_gallery 6 does not agree with a query that has no negative and 5 positives")
    # the camera rule drops 2 of query 0's positives: it has no negative and 3 positives of 5
    dropped = ranking_file(tmp_path, q, g, exclude_same_camera=True)
    assert load_result(dropped).per_query["n_pos"].tolist() == [3, 0, 0]
    assert load_result(dropped).n_gallery == 5


def test_nan_in_the_values_is_refused(tmp_path, results):
    path = written(tmp_path, results)

    def nan(t):
        t["terms.values"][0, 0] = math.nan

    rewrite(path, lambda h: None, nan, new_digest=True)
    refused(path, "not finite")


def test_terms_of_the_wrong_shape_are_refused(tmp_path, results):
    path = written(tmp_path, results)

    def cut(t):
        t["terms.values"] = t["terms.values"][:-1].clone()

    rewrite(path, lambda h: None, cut, new_digest=True)
    refused(path, "wrong type or shape")


def test_other_files_are_refused(tmp_path):
    emb = tmp_path / "emb.safetensors"
    save_file({"embeddings": torch.zeros(2, 3), "labels": torch.zeros(2, dtype=torch.int64)},
              str(emb))
    refused(emb, "not an embeval result file")
    text = tmp_path / "notes.txt"
    text.write_text("mAP,0.5\n")
    refused(text, "not a readable safetensors file")
    refused(tmp_path / "missing.result", "no such file")
    refused(tmp_path, "not a regular file")
    other = tmp_path / "other.result"
    save_file({"query_labels": torch.zeros(1, dtype=torch.int64)}, str(other),
              metadata={"embeval.result": "99"})
    refused(other, "format '99'")


@pytest.mark.parametrize("umask,mode", [(0o077, 0o600), (0o022, 0o644)])
def test_the_file_respects_the_umask(tmp_path, results, umask, mode):
    old = os.umask(umask)
    try:
        path = save_result(tmp_path / "r.result", results["cmc"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_failed_write_leaves_nothing(tmp_path, results, monkeypatch):
    def full_disk(f, tensors, meta):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(saved_module, "write_safetensors", full_disk)
    target = tmp_path / "r.result"
    with pytest.raises(InputFileError) as e:
        save_result(target, results["cmc"])
    assert str(target) in str(e.value)
    assert list(tmp_path.iterdir()) == []
    # an existing file is kept whole
    monkeypatch.undo()
    save_result(target, results["cmc"])
    before = target.read_bytes()
    monkeypatch.setattr(saved_module, "write_safetensors", full_disk)
    with pytest.raises(InputFileError):
        save_result(target, results["identify"])
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["r.result"]


def test_loaded_terms_give_the_same_intervals(tmp_path, results, data):
    """A loaded file compares like the result it came from (same per-query terms)."""
    from embeval.uncertainty import compare

    s = results["cmc"]
    back = load_result(save_result(tmp_path / "r.result", s))
    c = compare(s, back, n_resamples=50)
    assert all(m.diff == 0 and m.p_value == 1.0 for m in c.metrics.values())
    assert np.isfinite([m.a for m in c.metrics.values()]).all()
