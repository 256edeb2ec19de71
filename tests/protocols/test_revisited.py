"""Revisited Oxford/Paris: revisitop's AP and mP@k, the three settings, --ap trapezoid, the
ground-truth files and ``cmc --protocol`` (oracles: a revisitop-style reference written here
over the sorted dense score matrix)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.cli import cli_run, without_time

import embeval
from embeval.data.safetensors_io import write_safetensors
from embeval.errors import InputFileError
from embeval.evaluation import evaluate
from embeval.protocols.revisited import read_revisited, revisited

# ----------------------------------------------------------------- revisitop-style reference


def ref_ap(ranks: list[int], n_pos: int) -> float:
    """revisitop's compute_ap: ``ranks`` 0-based, ascending, of the positives after the ignored
    items are removed; trapezoids of width 1/n_pos."""
    ap = 0.0
    for j, r in enumerate(ranks):
        p0 = 1.0 if r == 0 else j / r
        p1 = (j + 1) / (r + 1)
        ap += (p0 + p1) / 2 / n_pos
    return ap


def ref_standard_ap(ranks: list[int], n_pos: int) -> float:
    return sum((j + 1) / (r + 1) for j, r in enumerate(ranks)) / n_pos


def ref_mp(ranks: list[int], k: int) -> float:
    """revisitop's mP@k of one query: k' = min(k, 1-based rank of the last positive)."""
    pos = np.asarray(ranks) + 1
    kq = min(int(pos.max()), k)
    return float((pos <= kq).sum() / kq)


def brute(scores: np.ndarray, truth: list[dict[str, set[int]]], ks: list[int],
          standard: bool = False) -> dict[str, float]:
    """Every metric of the protocol from the dense [Q, G] float64 matrix (tie-free)."""
    settings = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)),
                "hard": (("hard",), ("junk", "easy"))}
    out: dict[str, float] = {}
    mps: dict[str, dict[int, list[float]]] = {}
    for name, (pos_kinds, ign_kinds) in settings.items():
        aps, mps[name] = [], {k: [] for k in ks}
        for i, t in enumerate(truth):
            pos = set().union(*(t[k] for k in pos_kinds))
            ign = set().union(*(t[k] for k in ign_kinds)) - pos
            if not pos:
                continue  # skipped, as revisitop
            order = [g for g in np.argsort(-scores[i], kind="stable") if g not in ign]
            ranks = [r for r, g in enumerate(order) if g in pos]
            aps.append(ref_standard_ap(ranks, len(pos)) if standard else ref_ap(ranks, len(pos)))
            for k in ks:
                mps[name][k].append(ref_mp(ranks, k))
        out[f"mAP@{name}"] = float(np.mean(aps))
    for name in settings:
        out.update({f"mP@{k}@{name}": float(np.mean(mps[name][k])) for k in ks})
    return out


# ----------------------------------------------------------------- fixtures


def line_sets(q_values: list[float], g_values: list[float]):
    """1-D embeddings: inner scores q·g, exact in float32 (small integers)."""
    q = embeval.EmbeddingSet(torch.tensor(q_values).view(-1, 1), torch.zeros(len(q_values),
                                                                             dtype=torch.long))
    g = embeval.EmbeddingSet(torch.tensor(g_values).view(-1, 1), torch.zeros(len(g_values),
                                                                             dtype=torch.long))
    return q, g


def write_csv(path, truth: list[dict[str, set[int]]]) -> None:
    rows = ["query,gallery,kind"] + [f"{i},{g},{kind}" for i, t in enumerate(truth)
                                     for kind in ("easy", "hard", "junk") for g in sorted(t[kind])]
    path.write_text("\n".join(rows) + "\n")


def random_truth(rng: np.random.Generator, nq: int, ng: int) -> list[dict[str, set[int]]]:
    truth = []
    for _ in range(nq):
        items = rng.permutation(ng)[: rng.integers(0, 15)]
        kinds = rng.integers(0, 3, len(items))
        truth.append({k: {int(g) for g, c in zip(items, kinds) if c == j}
                      for j, k in enumerate(("easy", "hard", "junk"))})
    if nq:
        truth[0]["easy"] = set()  # a query without positives in the easy setting
    return truth


# ----------------------------------------------------------------- hand-computed cases


def test_hand_computed_three_settings(tmp_path) -> None:
    # one query, gallery scores 6 > 5 > ... > 1: g0 easy, g1 junk, g3 easy, g4 hard
    q, g = line_sets([1.0], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    truth = [{"easy": {0, 3}, "hard": {4}, "junk": {1}}]
    write_csv(tmp_path / "gt.csv", truth)
    res = revisited(q, g, read_revisited(tmp_path / "gt.csv", 1, 6), ks=(1, 5), metric="inner",
                    device="cpu")
    m = res.metrics
    # easy: g0 g2 g3 g5 (g1, g4 ignored): positives at 0, 2
    assert m["mAP@easy"] == pytest.approx(19 / 24, abs=1e-15)
    assert (m["mP@1@easy"], m["mP@5@easy"]) == (1.0, pytest.approx(2 / 3, abs=1e-15))
    # medium: g0 g2 g3 g4 g5: positives at 0, 2, 3
    assert m["mAP@medium"] == pytest.approx(55 / 72, abs=1e-15)
    assert m["mP@5@medium"] == pytest.approx(3 / 4, abs=1e-15)  # k' = 4
    # hard: g2 g4 g5 (g0, g1, g3 ignored): positive at 1
    assert m["mAP@hard"] == pytest.approx(1 / 4, abs=1e-15)
    assert (m["mP@1@hard"], m["mP@5@hard"]) == (0.0, 0.5)  # k' = min(5, 2)
    assert list(m) == ["mAP@easy", "mAP@medium", "mAP@hard", "mP@1@easy", "mP@5@easy",
                       "mP@1@medium", "mP@5@medium", "mP@1@hard", "mP@5@hard"]
    assert res.options["ap"] == "trapezoid"  # the default of the protocol
    # the reference agrees with the hand values
    assert ref_ap([0, 2], 2) == pytest.approx(19 / 24) and ref_ap([1], 1) == 0.25


def test_hand_computed_standard_ap_when_asked(tmp_path) -> None:
    q, g = line_sets([1.0], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    write_csv(tmp_path / "gt.csv", [{"easy": {0, 3}, "hard": {4}, "junk": {1}}])
    res = revisited(q, g, read_revisited(tmp_path / "gt.csv", 1, 6), ks=(1,), metric="inner",
                    device="cpu", ap="standard")
    assert res.metrics["mAP@easy"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-15)
    assert res.metrics["mAP@hard"] == 0.5


# ----------------------------------------------------------------- brute force


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_three_settings_equal_the_brute_force(tmp_path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    nq, ng = int(rng.integers(1, 7)), int(rng.integers(15, 40))
    qv = [float(x) for x in rng.choice([-3, -2, -1, 1, 2, 3], nq)]
    gv = [float(x) for x in rng.permutation(ng) - ng // 2]  # distinct: tie-free per query
    q, g = line_sets(qv, gv)
    truth = random_truth(rng, nq, ng)
    truth[-1]["easy"].add(0)  # at least one query with positives in every setting
    truth[-1]["hard"].add(1)
    for kind in ("hard", "junk"):
        truth[-1][kind] -= {0}
    truth[-1]["easy"] -= {1}
    truth[-1]["junk"] -= {1}
    write_csv(tmp_path / "gt.csv", truth)
    scores = np.outer(qv, gv)
    ks = [1, 5, 10]
    gt = read_revisited(tmp_path / "gt.csv", nq, ng)
    for standard in (False, True):
        got = revisited(q, g, gt, ks=ks, metric="inner", device="cpu",
                        **({"ap": "standard"} if standard else {})).metrics
        want = brute(scores, truth, ks, standard=standard)
        assert list(got) == list(want)
        for key in want:
            assert abs(got[key] - want[key]) <= 1e-12, (key, got[key], want[key])


def test_safetensors_ground_truth_equals_csv(tmp_path) -> None:
    rng = np.random.default_rng(3)
    truth = random_truth(rng, 5, 30)
    write_csv(tmp_path / "gt.csv", truth)
    tensors = {}
    for kind in ("easy", "hard", "junk"):
        lists = [sorted(t[kind], reverse=True) for t in truth]  # any order within a query
        tensors[f"{kind}_offsets"] = torch.tensor(np.cumsum([0] + [len(x) for x in lists]))
        tensors[kind] = torch.tensor([g for x in lists for g in x], dtype=torch.int64)
    with open(tmp_path / "gt.safetensors", "wb") as f:
        write_safetensors(f, tensors, {})
    a, b = read_revisited(tmp_path / "gt.csv", 5, 30), read_revisited(tmp_path / "gt.safetensors", 5, 30)
    for s in ("easy", "medium", "hard"):
        for field in ("offsets", "gallery", "positive"):
            assert torch.equal(getattr(a[s], field), getattr(b[s], field))


# ----------------------------------------------------------------- bad ground truth


@pytest.mark.slow
@pytest.mark.parametrize(("text", "line", "problem"), [
    ("query,gallery,kind\n0,1,easy\n0,2,medium\n", 3, "unknown kind 'medium'"),
    ("query,gallery,kind\n0,1,easy\n0,99,hard\n", 3, "gallery index 99 is out of range"),
    ("query,gallery,kind\n5,1,easy\n", 2, "query index 5 is out of range"),
    ("query,gallery,kind\n0,x,easy\n", 2, "gallery 'x' is not an integer"),
    ("query,gallery,kind\n0,1,easy\n0,2,junk\n0,1,hard\n", 4, "'hard' here but 'easy' on line 2"),
    ("query,gallery,relevance\n0,1,1\n", 1, "expected the header row"),
    ("query,gallery,kind\n0,1\n", 2, "expected 3 cells"),
])
def test_bad_csv_exits_2_naming_file_and_line(capsys, tmp_path, text, line, problem) -> None:
    q, g = line_sets([1.0, 2.0], [1.0, 2.0, 3.0])
    qf, gf = embeval.save(tmp_path / "q.safetensors", q.embeddings, q.labels), \
        embeval.save(tmp_path / "g.safetensors", g.embeddings, g.labels)
    bad = tmp_path / "gt.csv"
    bad.write_text(text)
    r = cli_run(capsys, "cmc", qf, gf, "--protocol", "roxford", "--relevance", bad, "--device", "cpu",
                "-k", 1)
    assert r.returncode == 2
    assert f"{bad}: line {line}: " in r.stderr and problem in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_safetensors_ground_truth(tmp_path) -> None:
    good = {"easy_offsets": torch.tensor([0, 1]), "easy": torch.tensor([0]),
            "hard_offsets": torch.tensor([0, 1]), "hard": torch.tensor([0]),
            "junk_offsets": torch.tensor([0, 0]), "junk": torch.zeros(0, dtype=torch.int64)}
    cases = [({}, "'easy' and 'hard'"),
             ({"hard": torch.tensor([1])}, None),
             ({"junk_offsets": torch.tensor([0, 0, 0])}, "'junk_offsets' has 3 entries"),
             ({"hard": torch.tensor([7])}, "'hard' entry 0 is 7, out of range"),
             ({"easy": torch.tensor([0], dtype=torch.int32)}, "1-D int64")]
    for change, problem in cases:
        path = tmp_path / "gt.safetensors"
        with open(path, "wb") as f:
            write_safetensors(f, {**good, **change}, {})
        if problem is None:
            read_revisited(path, 1, 3)
            continue
        with pytest.raises(InputFileError, match=problem.replace("(", r"\(")) as e:
            read_revisited(path, 1, 3)
        assert str(path) in str(e.value)
    with open(path, "wb") as f:
        write_safetensors(f, {k: v for k, v in good.items() if k != "junk"}, {})
    with pytest.raises(InputFileError, match="missing tensor 'junk'"):
        read_revisited(path, 1, 3)


# ----------------------------------------------------------------- --ap trapezoid, merge, CLI


@pytest.fixture(scope="module")
def label_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ap")
    gen = torch.Generator().manual_seed(7)
    qv = torch.tensor([1.0, -1.0, 2.0, -2.0, 3.0, 1.0]).view(-1, 1)
    gv = (torch.randperm(40, generator=gen) - 20).float().view(-1, 1)
    ql = torch.randint(0, 3, (6,), generator=gen)
    gl = torch.randint(0, 3, (40,), generator=gen)
    return {"q": embeval.save(d / "q.safetensors", qv, ql), "g": embeval.save(d / "g.safetensors", gv, gl),
            "scores": (qv @ gv.T).double().numpy(), "ql": ql.numpy(), "gl": gl.numpy(), "dir": d}


@pytest.mark.slow
def test_ap_trapezoid_changes_map_as_the_formula_and_merge_reproduces_it(capsys, label_files,
                                                                         monkeypatch) -> None:
    f = label_files
    monkeypatch.chdir(f["dir"])
    base = ["cmc", f["q"], f["g"], "--metric", "inner", "--device", "cpu", "-k", 1, "--json"]
    runs = {}
    for rule in ("standard", "trapezoid"):
        r = cli_run(capsys, *base, "--ap", rule)
        assert r.returncode == 0, r.stderr
        runs[rule] = json.loads(r.stdout)
        want_aps = []
        for i in range(len(f["ql"])):
            order = np.argsort(-f["scores"][i], kind="stable")
            pos = f["gl"][order] == f["ql"][i]
            ranks = list(np.flatnonzero(pos))
            if ranks:
                want_aps.append(ref_ap(ranks, len(ranks)) if rule == "trapezoid"
                                else ref_standard_ap(ranks, len(ranks)))
        assert abs(runs[rule]["metrics"]["mAP"] - float(np.mean(want_aps))) <= 1e-12
        assert runs[rule]["options"]["ap"] == rule
        for i in range(2):
            assert cli_run(capsys, *base[:-1], "--ap", rule, "--shard", f"{i}/2",
                           "--out-part", f"{rule}{i}.safetensors").returncode == 0
        merged = cli_run(capsys, "merge", f"{rule}0.safetensors", f"{rule}1.safetensors", "--json")
        assert merged.returncode == 0, merged.stderr
        assert without_time(merged.stdout) == without_time(r.stdout)
    assert runs["standard"]["metrics"]["mAP"] != runs["trapezoid"]["metrics"]["mAP"]
    # every other metric is the same under both rules
    assert {k: v for k, v in runs["standard"]["metrics"].items() if k != "mAP"} == \
        {k: v for k, v in runs["trapezoid"]["metrics"].items() if k != "mAP"}
    # the Python API: per-query ap follows the rule
    q, g = embeval.load(f["q"]), embeval.load(f["g"])
    res = evaluate(q, g, metric="inner", device="cpu", ks=(1,), ap="trapezoid")
    assert res.metrics["mAP"] == runs["trapezoid"]["metrics"]["mAP"]
    ap = res.per_query["ap"]
    assert float(ap[~torch.isnan(ap)].mean()) == pytest.approx(res.metrics["mAP"], abs=1e-12)


@pytest.mark.slow
def test_cmc_protocol_command_line(capsys, tmp_path) -> None:
    rng = np.random.default_rng(11)
    qv, gv = [1.0, -2.0, 3.0, 1.0], [float(x) for x in rng.permutation(30) - 15]
    q, g = line_sets(qv, gv)
    qf = embeval.save(tmp_path / "q.safetensors", q.embeddings, q.labels)
    gf = embeval.save(tmp_path / "g.safetensors", g.embeddings, g.labels)
    truth = random_truth(rng, 4, 30)
    truth[1]["easy"] |= {2}
    truth[1]["hard"] |= {3}
    for t in truth[1:2]:
        t["junk"] -= {2, 3}
        t["hard"] -= {2}
        t["easy"] -= {3}
    write_csv(tmp_path / "gt.csv", truth)
    base = ["cmc", qf, gf, "--protocol", "roxford", "--relevance", tmp_path / "gt.csv",
            "--metric", "inner", "--device", "cpu"]
    r = cli_run(capsys, *base, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    want = brute(np.outer(qv, gv), truth, [1, 5, 10])
    assert list(data["metrics"]) == list(want)
    assert all(abs(data["metrics"][k] - want[k]) <= 1e-12 for k in want)
    assert data["protocol"] == "roxford" and data["options"]["ap"] == "trapezoid"
    assert set(data["n_valid"]) == {"easy", "medium", "hard"}
    std = json.loads(cli_run(capsys, *base, "--json", "--ap", "standard").stdout)
    assert std["options"]["ap"] == "standard"
    want_std = brute(np.outer(qv, gv), truth, [1], standard=True)["mAP@medium"]
    assert abs(std["metrics"]["mAP@medium"] - want_std) <= 1e-12
    table = cli_run(capsys, *base)
    assert table.returncode == 0 and "mAP@hard" in table.stdout and "3 ranking passes" in table.stdout
    for extra, problem in ((["--shard", "0/2"], "--shard: not with --protocol"),
                           (["--no-positive", "zero"], "--no-positive"),
                           (["--per-query", tmp_path / "pq.csv"], "--per-query")):
        bad = cli_run(capsys, *base, *extra)
        assert bad.returncode == 2 and problem in bad.stderr, bad.stderr
    no_gt = cli_run(capsys, *base[:5], *base[7:])
    assert no_gt.returncode == 2 and "needs --relevance" in no_gt.stderr
