"""Listed verification trials: the pairs file, template pooling, pair scores, LFW folds.

Oracles: plain Python / numpy reimplementations written here, and the all-pairs engine's own
positive scores (bit-for-bit)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import embeval
from embeval.data.safetensors_io import write_safetensors
from embeval.data.store import read_ids
from embeval.engine.rank import positive_pairs
from embeval.engine.similarity import aux, transform
from embeval.engine.trial_pass import trial_stats
from embeval.errors import InputFileError, OptionError
from embeval.verification import pairs as vp
from embeval.verification.pairs import (
    TemplateIds,
    fold_accuracy,
    pair_scores,
    pool_templates,
    read_pairs,
    trial_labels,
)

# ---------------------------------------------------------------------------------- the file


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _csv(rows: list[tuple[int, ...]], header: str = "query,gallery,same") -> str:
    return header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)


def test_reads_columns_in_any_order(tmp_path: Path) -> None:
    p = _write(tmp_path / "p.csv", "same,gallery,query\n1,4,0\n0,2,3\n")
    got = read_pairs(p, 5, 6)
    assert got.query.tolist() == [0, 3] and got.gallery.tolist() == [4, 2]
    assert got.same.tolist() == [True, False] and got.query.dtype == torch.int64
    two = read_pairs(_write(tmp_path / "q.csv", "gallery,query\n5,0\n"), 1, 6)
    assert two.same is None and two.query.tolist() == [0] and two.gallery.tolist() == [5]


_ROWS = st.lists(st.tuples(st.integers(0, 99), st.integers(0, 999), st.integers(0, 1)),
                 min_size=1, max_size=60)


@settings(max_examples=examples(60), deadline=None)
@given(rows=_ROWS, style=st.sampled_from(["plain", "crlf", "bom", "spaces", "quotes", "blank",
                                          "no_final_newline", "minus_zero"]),
       block=st.sampled_from([7, 16, 40, 1 << 22]))
def test_every_layout_reads_the_same_pairs(tmp_path_factory: pytest.TempPathFactory,
                                           rows: list[tuple[int, int, int]], style: str,
                                           block: int) -> None:
    """The numpy path (plain blocks, any block size) and the csv path agree with the rows."""
    cells = [[str(x) for x in r] for r in rows]
    if style == "spaces":
        cells = [[f" {c}\t" for c in r] for r in cells]
    elif style == "quotes":
        cells = [[f'"{c}"' for c in r] for r in cells]
    elif style == "minus_zero":
        cells = [[c if i else "-0" if c == "0" else c for i, c in enumerate(r)] for r in cells]
    nl = "\r\n" if style == "crlf" else "\n"
    lines = ["query,gallery,same"] + [",".join(r) for r in cells]
    if style == "blank":
        lines.insert(len(lines) // 2 + 1, "")
    text = nl.join(lines) + ("" if style == "no_final_newline" else nl)
    raw = (b"\xef\xbb\xbf" if style == "bom" else b"") + text.encode()
    p = _write(tmp_path_factory.mktemp("p") / "pairs.csv", raw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vp, "_BLOCK", block)
        got = read_pairs(p, 100, 1000)
    assert got.query.tolist() == [r[0] for r in rows]
    assert got.gallery.tolist() == [r[1] for r in rows]
    assert got.same.tolist() == [bool(r[2]) for r in rows]


_ERRORS = [
    ("", "line 1: empty file"),
    ("\nquery,gallery\n0,0\n", "line 1: the line is blank"),
    ("0,1\n", "line 1: unknown column '0'"),
    ("query,gallery,label\n0,0,1\n", "line 1: unknown column 'label'"),
    ("query,same\n0,1\n", "line 1: no 'gallery' column"),
    ("query,gallery,query\n0,0,0\n", "line 1: column 'query' is given twice"),
    ("query,gallery\n", "line 2: no pairs after the header row"),
    ("query,gallery\n0,1\n1,2,3\n", "line 3: expected 2 cells (query,gallery), got 3"),
    ("gallery,query,same\n0,1,1\n0,1\n", "line 3: expected 3 cells (gallery,query,same), got 2"),
    ("query,gallery\n0,1\n\n0,x\n", "line 4: gallery cell 'x' is not an integer"),
    ("query,gallery\n0,1\n1.0,2\n", "line 3: query cell '1.0' is not an integer"),
    ("query,gallery\n0,1\n0,\n", "line 3: gallery cell '' is not an integer"),
    ("query,gallery\n0,1\n0,1_0\n", "line 3: gallery cell '1_0' is not an integer"),
    ("query,gallery\n0,1\n3,1\n", "line 3: query index 3 is out of range [0, 3)"),
    ("query,gallery\n0,1\n-1,1\n", "line 3: query index -1 is out of range [0, 3)"),
    ("query,gallery\n0,4\n", "line 2: gallery index 4 is out of range [0, 4)"),
    ("query,gallery\n0,99999999999999999999999\n",
     "line 2: gallery index 99999999999999999999999 is out of range"),
    ("query,gallery,same\n0,1,1\n0,1,2\n", "line 3: same must be 1 or 0, got 2"),
    ("query,gallery,same\n0,1,-1\n", "line 2: same must be 1 or 0, got -1"),
    ('query,gallery\n0,1\n"0\n1",1\n', "line 3: query cell '0\\n1' is not an integer"),
    (b"query,gallery\n0,1\n0,\xff\n", "line 3: not UTF-8 text"),
    (b"qu\xe9ry,gallery\n0,1\n", "line 1: not UTF-8 text"),
]


@pytest.mark.parametrize(("text", "message"), _ERRORS)
def test_bad_pairs_files_name_the_file_and_line(tmp_path: Path, text: str | bytes,
                                                message: str) -> None:
    p = _write(tmp_path / "trials.csv", text)
    with pytest.raises(InputFileError) as e:
        read_pairs(p, 3, 4)
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value).replace("\\n", "")


@pytest.mark.parametrize("block", [16, 64, 1 << 22])
def test_errors_deep_in_a_plain_file_name_their_line(tmp_path: Path, block: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the numpy path, in a later block: the line is still exact."""
    monkeypatch.setattr(vp, "_BLOCK", block)
    rows = [(i % 7, i % 5, i % 2) for i in range(500)]
    for bad_row, value, message in [(311, (7, 0, 1), "line 313: query index 7"),
                                    (402, (0, 5, 1), "line 404: gallery index 5"),
                                    (77, (0, 0, 3), "line 79: same must be 1 or 0, got 3")]:
        broken = rows.copy()
        broken[bad_row] = value
        p = _write(tmp_path / "big.csv", _csv(broken))
        with pytest.raises(InputFileError, match=message):
            read_pairs(p, 7, 5)


def test_missing_folder_and_fifo(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        read_pairs(tmp_path / "nope.csv", 1, 1)
    with pytest.raises(InputFileError, match="is a folder"):
        read_pairs(tmp_path, 1, 1)


def test_template_ids_map_to_rows_and_unknown_ids_name_the_line(tmp_path: Path) -> None:
    ids = TemplateIds(torch.tensor([-5, 3, 1000, 2**40]), "q.safetensors")
    gids = TemplateIds(torch.tensor([7, 9]), "g.safetensors")
    p = _write(tmp_path / "t.csv", f"query,gallery\n1000,9\n-5,7\n{2**40},9\n")
    got = read_pairs(p, ids, gids)
    assert got.query.tolist() == [2, 0, 3] and got.gallery.tolist() == [1, 0, 1]
    bad = _write(tmp_path / "u.csv", "query,gallery\n3,7\n3,8\n")
    with pytest.raises(InputFileError, match=r"u.csv: line 3: template id 8 \(gallery column\) is "
                                             r"not in g.safetensors"):
        read_pairs(bad, ids, gids)
    huge = _write(tmp_path / "h.csv", "query,gallery\n99999999999999999999,7\n")
    with pytest.raises(InputFileError, match="line 2: template id 99999999999999999999"):
        read_pairs(huge, ids, gids)


# ---------------------------------------------------------------------------------- templates


def _save(path: Path, emb: torch.Tensor, labels: torch.Tensor, **extra: torch.Tensor) -> Path:
    with open(path, "wb") as f:
        write_safetensors(f, {"embeddings": emb, "labels": labels, **extra},
                          {"embeval.format": "1"})
    return path


def test_read_ids_accessor(tmp_path: Path) -> None:
    n = 4
    p = _save(tmp_path / "e.safetensors", torch.zeros(n, 2), torch.zeros(n, dtype=torch.int64),
              templates=torch.tensor([5, 5, 6, 7], dtype=torch.int32),
              media=torch.zeros(3, dtype=torch.int64), floats=torch.zeros(n))
    got = read_ids(p, "templates", n)
    assert got.dtype == torch.int64 and got.tolist() == [5, 5, 6, 7]
    assert read_ids(p, "absent", n) is None
    with pytest.raises(InputFileError, match="'media' has 3 entries but embeddings have 4 rows"):
        read_ids(p, "media", n)
    with pytest.raises(InputFileError, match="'floats' must be integers"):
        read_ids(p, "floats", n)


def _numpy_templates(emb: np.ndarray, tpl: np.ndarray, media: np.ndarray | None) -> np.ndarray:
    """IJB pooling, one template at a time, in float64."""
    out = []
    for t in sorted(set(tpl.tolist())):
        rows = emb[tpl == t].astype(np.float64)
        if media is not None:
            m = media[tpl == t]
            rows = np.stack([rows[m == x].mean(0) for x in sorted(set(m.tolist()))])
        v = rows.mean(0)
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


@pytest.mark.parametrize("with_media", [False, True])
def test_pool_templates_against_numpy(tmp_path: Path, with_media: bool) -> None:
    g = torch.Generator().manual_seed(1)
    n, d = 300, 9
    emb = torch.randn(n, d, generator=g)
    tpl = torch.randint(0, 40, (n,), generator=g) * 3 - 10  # ids, not indices
    labels = tpl * 7  # one label per template
    media = torch.randint(0, 4, (n,), generator=g) if with_media else None
    extra = {"templates": tpl} | ({"media": media} if with_media else {})
    s = embeval.load(_save(tmp_path / "e.safetensors", emb, labels, **extra))
    pooled, ids = pool_templates(s)
    assert ids.tolist() == sorted(set(tpl.tolist()))
    ref = _numpy_templates(emb.numpy(), tpl.numpy(), None if media is None else media.numpy())
    assert pooled.embeddings.dtype == torch.float32
    np.testing.assert_allclose(pooled.embeddings.numpy(), ref, rtol=0, atol=1e-7)
    assert pooled.labels.tolist() == (ids * 7).tolist() and pooled.cameras is None
    # the same from tensors given in memory, and with media the result differs from without
    again, _ = pool_templates(embeval.EmbeddingSet(emb, labels), templates=tpl, media=media)
    assert torch.equal(again.embeddings, pooled.embeddings)
    if with_media:
        plain = _numpy_templates(emb.numpy(), tpl.numpy(), None)
        assert not np.allclose(plain, ref)


def _insightface_templates(feats: np.ndarray, faceness: np.ndarray, templates: np.ndarray,
                           medias: np.ndarray) -> np.ndarray:
    """insightface's IJB pooling (recognition/arcface_torch/eval_ijbc.py, defaults
    use_norm_score=True, use_detector_score=True), re-implemented: raw items times their
    faceness; per template, each medium's single item or the mean of its items; the sum over
    media; then sklearn.preprocessing.normalize."""
    from sklearn.preprocessing import normalize

    feats = feats * faceness[:, None]
    out = []
    for t in np.unique(templates):
        rows, m = feats[templates == t], medias[templates == t]
        per_media = [rows[m == u].mean(0) if (m == u).sum() > 1 else rows[m == u][0]
                     for u in np.unique(m)]
        out.append(np.sum(per_media, axis=0))
    return normalize(np.array(out))


def test_pool_templates_with_faceness_is_insightface(tmp_path: Path) -> None:
    """A 'faceness' float tensor [N] in the file weights each item before pooling."""
    g = torch.Generator().manual_seed(5)
    n, d = 200, 6
    emb = torch.randn(n, d, generator=g) * (1 + 3 * torch.rand(n, 1, generator=g))  # raw norms
    tpl = torch.randint(0, 25, (n,), generator=g)
    media = torch.randint(0, 5, (n,), generator=g)
    face = torch.rand(n, generator=g, dtype=torch.float64).float()
    s = embeval.load(_save(tmp_path / "e.safetensors", emb, tpl, templates=tpl, media=media,
                           faceness=face))
    pooled, _ = pool_templates(s)
    want = _insightface_templates(emb.double().numpy(), face.double().numpy(), tpl.numpy(),
                                  media.numpy())
    np.testing.assert_allclose(pooled.embeddings.numpy(), want, rtol=0, atol=1e-7)
    plain, _ = pool_templates(embeval.EmbeddingSet(emb, tpl), templates=tpl, media=media)
    assert not np.allclose(plain.embeddings.numpy(), want, atol=1e-4)  # the weights matter
    given, _ = pool_templates(embeval.EmbeddingSet(emb, tpl), templates=tpl, media=media,
                              weights=face)
    assert torch.equal(given.embeddings, pooled.embeddings)
    for bad, problem in ((torch.full((n,), -1.0), "finite and >= 0"),
                         (torch.zeros(n, dtype=torch.int64), "must be floats"),
                         (torch.zeros(n - 1), "1-D")):
        p = _save(tmp_path / "bad.safetensors", emb, tpl, templates=tpl, faceness=bad)
        with pytest.raises(InputFileError, match=problem):
            pool_templates(embeval.load(p))


def test_pool_templates_over_several_files(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    emb, tpl, med = torch.randn(50, 4, generator=g), torch.arange(50) // 4, torch.arange(50) % 3
    a = _save(tmp_path / "a.safetensors", emb[:20], tpl[:20], templates=tpl[:20], media=med[:20])
    b = _save(tmp_path / "b.safetensors", emb[20:], tpl[20:], templates=tpl[20:], media=med[20:])
    whole, ids = pool_templates(embeval.load_many([a, b]))
    ref, _ = pool_templates(embeval.EmbeddingSet(emb, tpl), templates=tpl, media=med)
    assert torch.equal(whole.embeddings, ref.embeddings) and ids.tolist() == list(range(13))
    c = _save(tmp_path / "c.safetensors", emb[20:], tpl[20:], templates=tpl[20:])
    with pytest.raises(InputFileError, match="c.safetensors: has no 'media' tensor"):
        pool_templates(embeval.load_many([a, c]))


def test_template_errors(tmp_path: Path) -> None:
    emb = torch.randn(6, 3)
    mixed = _save(tmp_path / "mixed.safetensors", emb, torch.tensor([1, 1, 2, 2, 2, 3]),
                  templates=torch.tensor([10, 10, 20, 20, 30, 30]))
    with pytest.raises(InputFileError, match=r"mixed.safetensors: template 30 has items with "
                                             r"different labels \(2 and 3\)"):
        pool_templates(embeval.load(mixed))
    none = _save(tmp_path / "none.safetensors", emb, torch.zeros(6, dtype=torch.int64))
    with pytest.raises(InputFileError, match="none.safetensors: no 'templates' tensor"):
        pool_templates(embeval.load(none))
    with pytest.raises(OptionError, match="templates: <tensor> was not read from a file"):
        pool_templates(embeval.EmbeddingSet(emb, torch.zeros(6, dtype=torch.int64)))


# ---------------------------------------------------------------------------------- scores


def _reference(q: torch.Tensor, g: torch.Tensor, qi: torch.Tensor, gi: torch.Tensor,
               metric: str) -> torch.Tensor:
    """The float32 transform of each dot product summed exactly (math.fsum of float64 products,
    exact for float32 inputs) and rounded to float32 once."""
    prods = q[qi].double() * g[gi].double()
    dots = torch.tensor([math.fsum(row) for row in prods.tolist()], dtype=torch.float64).float()
    return transform(dots, aux(q, metric)[qi], aux(g, metric)[gi], metric)


@pytest.mark.parametrize("metric", ["cosine", "inner", "euclid", "sq_euclid"])
def test_pair_scores_are_the_correctly_rounded_scores(tmp_path: Path, metric: str) -> None:
    g = torch.Generator().manual_seed(3)
    q, gal = torch.randn(40, 37, generator=g), torch.randn(120, 37, generator=g)
    qi, gi = torch.randint(0, 40, (999,), generator=g), torch.randint(0, 120, (999,), generator=g)
    ref = _reference(q, gal, qi, gi, metric)
    lazy = embeval.load(embeval.save(tmp_path / "g.safetensors", gal, torch.zeros(120).long()))
    for gallery, rows in ((gal, None), (lazy, 17), (lazy, 1)):
        got = pair_scores(q, gallery, qi, gi, metric, block_rows=rows)
        assert got.dtype == torch.float32 and torch.equal(got, ref)
    if metric in ("cosine", "inner"):  # float64 numpy; inner relative to |q|·|g|
        qn, gn = q.double().numpy()[qi], gal.double().numpy()[gi]
        scale = np.linalg.norm(qn, axis=1) * np.linalg.norm(gn, axis=1)
        exact = np.einsum("ij,ij->i", qn, gn) / (scale if metric == "cosine" else 1.0)
        error = np.abs(ref.double().numpy() - exact) / (1.0 if metric == "cosine" else scale)
        assert error.max() < 1e-6


def test_pair_scores_follow_the_memory_budget_with_the_same_bits(tmp_path: Path) -> None:
    """``memory`` sets the gallery block and the gathered pair rows (half each): at 1 MB and
    D = 4096 that is 32 gallery rows and 16 pairs a step, against the one-step default."""
    g = torch.Generator().manual_seed(5)
    q, gal = torch.randn(10, 4096, generator=g), torch.randn(50, 4096, generator=g)
    qi, gi = torch.randint(0, 10, (200,), generator=g), torch.randint(0, 50, (200,), generator=g)
    ref = _reference(q, gal, qi, gi, "cosine")
    lazy = embeval.load(embeval.save(tmp_path / "g.safetensors", gal, torch.zeros(50).long()))
    for gallery, memory in ((gal, None), (lazy, "1MB"), (lazy, 3 << 20), (gal, "1MB")):
        assert torch.equal(pair_scores(q, gallery, qi, gi, "cosine", memory=memory), ref)
    with pytest.raises(OptionError, match="memory"):
        pair_scores(q, gal, qi, gi, "cosine", memory="lots")


def test_pair_scores_refuse_bad_indices() -> None:
    q, g = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"gidx holds indices outside \[0, 5\)"):
        pair_scores(q, g, torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="qidx holds indices"):
        pair_scores(q, g, torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="must be int64"):
        pair_scores(q, g, torch.tensor([0], dtype=torch.int32), torch.tensor([0]))
    assert pair_scores(q, g, torch.zeros(0, dtype=torch.int64),
                       torch.zeros(0, dtype=torch.int64)).shape == (0,)


def test_pair_scores_equal_the_engines_genuine_scores() -> None:
    """The genuine pairs of the all-pairs verification pass get the same bits here."""
    g = torch.Generator().manual_seed(4)
    q = embeval.EmbeddingSet(torch.randn(30, 64, generator=g), torch.randint(-1, 6, (30,), generator=g))
    gal = embeval.EmbeddingSet(torch.randn(90, 64, generator=g), torch.randint(0, 6, (90,), generator=g))
    stats = trial_stats(q, gal, metric="cosine", backend="torch", device="cpu")
    qi, gi = positive_pairs(q.labels, gal.labels)
    values, counts = torch.unique(pair_scores(q, gal, qi, gi, "cosine"), return_counts=True)
    assert torch.equal(values, stats.gen_values) and torch.equal(counts, stats.gen_counts)


def test_trial_labels() -> None:
    ql, gl = torch.tensor([0, -1, 2]), torch.tensor([0, -1, 5, 2])
    plain = vp.Pairs(torch.tensor([0, 1, 2, 2, 0]), torch.tensor([0, 1, 3, 2, 3]), None, "p")
    assert trial_labels(plain, ql, gl).tolist() == [True, False, True, False, False]
    same = torch.tensor([False, True, False, True, True])
    listed = vp.Pairs(plain.query, plain.gallery, same, "p")
    assert trial_labels(listed, ql, gl).tolist() == same.tolist()


# ---------------------------------------------------------------------------------- folds


def _brute_force_folds(scores: list[float], genuine: list[bool],
                       folds: int) -> tuple[list[float], list[float]]:
    """Folds from scikit-learn's ``KFold(folds, shuffle=False)`` itself (as insightface's
    verification.py and facenet's lfw.py split LFW)."""
    from sklearn.model_selection import KFold

    n = len(scores)
    accs, thresholds = [], []
    for train_idx, test_idx in KFold(folds, shuffle=False).split(np.arange(n)):
        train = train_idx.tolist()
        best, best_t = -1, None
        for t in sorted({scores[j] for j in train}) + [math.inf]:
            right = sum((scores[j] >= t) == genuine[j] for j in train)
            if right >= best:  # ascending candidates: ties go to the higher threshold
                best, best_t = right, t
        test_right = sum((scores[j] >= best_t) == genuine[j] for j in test_idx)
        accs.append(test_right / len(test_idx))
        thresholds.append(best_t)
    return accs, thresholds


@settings(max_examples=examples(150), deadline=None)
@given(data=st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=40),
       folds=st.integers(2, 12))
def test_fold_accuracy_against_brute_force(data: list[tuple[int, bool]], folds: int) -> None:
    folds = min(folds, len(data))
    scores = [x / 4 for x, _ in data]  # few distinct values: heavy ties
    genuine = [gen for _, gen in data]
    got = fold_accuracy(torch.tensor(scores), torch.tensor(genuine), folds)
    accs, thresholds = _brute_force_folds(scores, genuine, folds)
    assert got.accuracies == accs and got.thresholds == thresholds
    assert got.mean == pytest.approx(np.mean(accs), abs=1e-12)
    assert got.std == pytest.approx(np.std(accs), abs=1e-12)


def _insightface_folds(dist: np.ndarray, same: np.ndarray, folds: int) -> list[float]:
    """Each fold's accuracy as insightface's ``recognition/arcface_torch/eval/verification.py``
    computes it (``calculate_roc`` with ``calculate_accuracy``, written here from its formulas):
    thresholds ``np.arange(0, 4, 0.01)``, predict same iff ``dist < threshold``, the training
    folds' best by ``np.argmax`` (the first), then the held-out fold's accuracy at it."""
    from sklearn.model_selection import KFold

    grid = np.arange(0, 4, 0.01)

    def accuracy(t: float, d: np.ndarray, y: np.ndarray) -> float:
        predict = np.less(d, t)
        tp = np.sum(predict & y)
        tn = np.sum(~predict & ~y)
        return float(tp + tn) / d.size

    out = []
    for train, test in KFold(folds, shuffle=False).split(np.arange(len(dist))):
        best = int(np.argmax([accuracy(t, dist[train], same[train]) for t in grid]))
        out.append(accuracy(grid[best], dist[test], same[test]))
    return out


@settings(max_examples=examples(60), deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 120), folds=st.integers(2, 10),
       dim=st.integers(2, 8), metric=st.sampled_from(["cosine", "sq_euclid"]),
       snap=st.booleans())
def test_grid_fold_accuracy_equals_insightface(seed: int, n: int, folds: int, dim: int,
                                               metric: str, snap: bool) -> None:
    """``thresholds="grid"`` against insightface's fold loop on the same float64 distances of
    unit vectors (``snap``: distances moved onto grid points, where ``<`` decides)."""
    folds = min(folds, n)
    rng = np.random.default_rng(seed)
    e1, e2 = (rng.normal(size=(n, dim)) for _ in range(2))
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    same = rng.random(n) < 0.5
    e2[same] = e1[same] + 0.7 * e2[same]  # genuine pairs closer
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    if snap:
        dist = np.round(dist * 100) * 0.01  # on the grid (and its float64 values)
    scores = -dist if metric == "sq_euclid" else (2.0 - dist) / 2.0
    if metric == "cosine":  # the distance embeval derives must be the one given to insightface
        dist = 2.0 - 2.0 * scores
    got = fold_accuracy(torch.tensor(scores), torch.tensor(same), folds, thresholds="grid",
                        metric=metric)
    assert got.accuracies == _insightface_folds(dist, same, folds)


def test_grid_takes_the_lowest_of_equally_good_thresholds() -> None:
    """Distances 0.5 (genuine) and 1.5 (impostor) in every fold: every threshold in (0.5, 1.5]
    is perfect; insightface's np.argmax takes the first, 0.51 (embeval's own rule would keep the
    highest)."""
    dist = torch.tensor([0.5, 1.5, 0.5, 1.5], dtype=torch.float64)
    got = fold_accuracy(-dist, torch.tensor([True, False, True, False]), 2, thresholds="grid",
                        metric="sq_euclid")
    assert got.accuracies == [1.0, 1.0] and got.thresholds == [0.51, 0.51]
    with pytest.raises(OptionError, match="fold_thresholds: unknown rule 'nearest'") as e:
        fold_accuracy(-dist, torch.tensor([True, False, True, False]), 2, thresholds="nearest")
    assert e.value.param == "fold_thresholds"


@pytest.mark.parametrize(("n", "folds"), [(5997, 10), (6000, 10), (7001, 10), (13, 4), (2, 2)])
def test_fold_bounds_are_sklearn_kfold(n: int, folds: int) -> None:
    """The first n % folds folds get the extra trials (a cleaned LFW list of 5,997 pairs: 7
    folds of 600, then 3 of 599), exactly as KFold's test indices."""
    from sklearn.model_selection import KFold

    want = [(int(t[0]), int(t[-1]) + 1) for _, t in KFold(folds, shuffle=False).split(range(n))]
    assert vp.fold_bounds(n, folds) == want


def test_fold_accuracy_takes_the_highest_of_equally_good_thresholds() -> None:
    """Fold 3's training trials are separated by any threshold in (0.2, 0.8]: the candidates
    0.8 and 0.9 (and +inf) are checked, 0.8 is the best and the highest: 0.7 is then rejected."""
    scores = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.3], dtype=torch.float32)
    genuine = torch.tensor([True, False, True, False, True, False])
    got = fold_accuracy(scores, genuine, folds=3)
    assert got.accuracies == [1.0, 1.0, 0.5]
    assert got.mean == pytest.approx(5 / 6) and got.std == pytest.approx(math.sqrt(2) / 6)
    assert got.thresholds == [float(torch.tensor(0.7)), float(torch.tensor(0.7)),
                              float(torch.tensor(0.8))]


@pytest.mark.parametrize("folds", [1, 0, 7, True, 2.0])
def test_fold_count_errors_name_folds(folds: object) -> None:
    with pytest.raises(OptionError, match="folds") as e:
        fold_accuracy(torch.zeros(6), torch.zeros(6, dtype=torch.bool), folds)  # type: ignore[arg-type]
    assert e.value.param == "folds"
