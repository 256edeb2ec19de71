"""Array jobs: `--shard i/n` parts merged by `embeval merge` give the single run's output, bit for bit."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.cli import cli, cli_run, without_time
from helpers.data import assert_same, sets
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import embeval
from embeval.engine import shard_range
from embeval.evaluation import evaluation_stats
from embeval.results import partials
from embeval.results.partials import Partial, load_partial, merge_parts, save_partial


def job_header(metric: str = "cosine") -> dict:
    """A complete ``job`` of a part header (load_partial checks every field's type)."""
    fp = {"file": "/x.safetensors", "size": 1, "sha256": "0" * 64}
    return {"command": "cmc", "ks": [1], "knn_k": None, "pr": False, "extra": {}, "out_topk": None,
            "label_names": None, "inputs": {"query": [fp], "gallery": [fp]},
            "options": {"metric": metric, "precision": "fp32", "exclude_same_camera": False,
                        "exclude_self": False, "aggregate": "none", "no_positive": "skip"}}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("parts")
    q, g = sets(nq=120, ng=900, d=16)
    return {"q": embeval.save(d / "q.safetensors", q.embeddings, q.labels, q.cameras),
            "g": embeval.save(d / "g.safetensors", g.embeddings, g.labels, g.cameras)}


@given(st.integers(1, 100_000), st.integers(1, 64), st.sampled_from([1, 16, 512, 2048]))
def test_shard_ranges_cover_the_items_once(n_items: int, count: int, align: int) -> None:
    ranges = [shard_range(n_items, i, count, align=align) for i in range(count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n_items
    assert all(a[1] == b[0] and a[0] <= a[1] for a, b in zip(ranges, ranges[1:]))
    if count * align <= n_items:  # every shard can get a whole unit: boundaries on units
        assert all(a % align == 0 for a, _ in ranges) and all(b > a for a, b in ranges)
    assert shard_range(10_000, 1, 2, align=2048) == (4096, 10_000)


@pytest.mark.slow
@pytest.mark.parametrize("metric", embeval.METRICS)
def test_parts_merge_bit_for_bit(tmp_path: Path, metric: str) -> None:
    q, g = sets()
    opts = dict(metric=metric, knn_k=6, exclude_same_camera=True, device="cpu")
    whole = evaluation_stats(q, g, **opts)
    paths = []
    for i in (2, 0, 1):  # any order
        ev = evaluation_stats(q, g, shard=(i, 3), **opts, block_size=333)
        a, b = ev.gallery_range
        header = {"job": job_header(metric), "shard": [i, 3], "gallery_range": [a, b]}
        paths.append(save_partial(tmp_path / f"p{i}", Partial(ev.stats, g.labels[a:b], header)))
    merged = merge_parts([load_partial(p) for p in paths])
    assert_same(merged.stats, whole.stats)
    assert torch.equal(merged.gallery_labels, g.labels)


@pytest.mark.slow
@pytest.mark.parametrize(("command", "flags", "kwargs"), [
    ("cmc", ["-k", "1", "5", "--exclude-same-camera", "--no-positive", "zero"],
     dict(ks=(1, 5), exclude_same_camera=True, no_positive="zero")),
    ("knn", ["-k", "5", "--metric", "inner"], dict(ks=(1,), knn_k=5, metric="inner")),
    ("pr", ["--metric", "euclid", "--aggregate", "mean"],
     dict(ks=(1,), pr=True, metric="euclid", aggregate="mean")),
])
def test_merge_partials_api_equals_evaluate(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            files: dict[str, Path], command: str,
                                            flags: list[str], kwargs: dict) -> None:
    """embeval.merge_partials(parts of `--shard i/3` runs) is the EvalResult of one evaluate()."""
    q, g = files["q"], files["g"]
    for i in range(3):
        rc, _, err = cli(capsys, command, q, g, *flags, "--shard", f"{i}/3",
                         "--out-part", tmp_path / f"{command}.part{i}.safetensors")
        assert rc == 0, err
    merged = embeval.merge_partials([str(tmp_path / f"{command}.part*.safetensors")])
    whole = embeval.evaluate(embeval.load(q), embeval.load(g), device="cpu", **kwargs)
    assert isinstance(merged, embeval.EvalResult)
    assert merged.metrics == whole.metrics and list(merged.metrics) == list(whole.metrics)
    assert merged.per_query.keys() == whole.per_query.keys()
    for k in whole.per_query:  # bit for bit (NaN where a query has no positive / negative)
        torch.testing.assert_close(merged.per_query[k], whole.per_query[k], rtol=0, atol=0,
                                   equal_nan=True, msg=k)
    assert merged.options == whole.options and list(merged.options) == list(whole.options)
    assert (merged.n_query, merged.n_gallery, merged.n_valid) == \
        (whole.n_query, whole.n_gallery, whole.n_valid)
    if kwargs.get("pr"):
        assert merged.pr_curves is not None and whole.pr_curves is not None
        assert all(torch.equal(a, b) for a, b in zip(merged.pr_curves, whole.pr_curves))
    with pytest.raises(embeval.InputFileError, match=r"shard\(s\) 1/3 missing"):
        embeval.merge_partials([tmp_path / f"{command}.part0.safetensors",
                                tmp_path / f"{command}.part2.safetensors"])


@pytest.mark.slow
@pytest.mark.parametrize(("command", "opts", "outputs"), [
    ("cmc", ["-k", "1", "5", "--exclude-same-camera"], [("--per-query", "pq.csv")]),
    ("score", ["-k", "1", "3", "--metric", "euclid"], [("--out", "s.safetensors")]),
    ("score", ["-k", "2", "--out-topk", "7"], [("--out", "t.safetensors")]),
    ("knn", ["-k", "5"], [("--predictions", "p.csv")]),
    ("pr", ["--metric", "inner"], [("--curves", "c.safetensors"), ("--per-query", "pq.csv")]),
    ("verify", ["--far", "1e-3", "1e-2", "--exclude-same-camera"], [("--roc", "roc.csv")]),
    ("identify", ["--fpir", "0.05", "0.2", "-k", "1", "5"], []),
])
def test_shard_merge_equals_one_run(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    files: dict[str, Path], command: str, opts: list[str],
                                    outputs: list[tuple[str, str]]) -> None:
    q, g = files["q"], files["g"]
    (tmp_path / "one").mkdir()
    (tmp_path / "merged").mkdir()
    one_files = [x for opt, name in outputs for x in (opt, tmp_path / "one" / name)]
    rc, single, err = cli(capsys, command, q, g, *opts, "--json", *one_files)
    assert rc == 0, err
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.safetensors"
        rc, out, err = cli(capsys, command, q, g, *opts, "--shard", f"{i}/3", "--out-part", part)
        assert rc == 0 and out == "", err
        parts.append(part)
    merged_files = [x for opt, name in outputs for x in (opt, tmp_path / "merged" / name)]
    rc, merged, err = cli(capsys, "merge", *reversed(parts), "--json", *merged_files)
    assert rc == 0, err
    assert without_time(merged) == without_time(single)
    elapsed = re.compile(r', "elapsed_s": [0-9.e+-]+')
    assert elapsed.sub("", merged) == elapsed.sub("", single)  # the same line, key order included
    for _, name in outputs:
        a, b = tmp_path / "one" / name, tmp_path / "merged" / name
        if name.endswith(".csv"):
            assert a.read_text() == b.read_text(), name
        else:
            x, y = load_file(a), load_file(b)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    # the table too (--out-topk goes only with --out or --shard)
    table_opts = " ".join(map(str, opts)).replace("--out-topk 7", "").split()
    rc, table, _ = cli(capsys, command, q, g, *table_opts)
    rc2, merged_table, _ = cli(capsys, "merge", *parts)
    assert rc == rc2 == 0
    assert table.rsplit("·", 1)[0] == merged_table.rsplit("·", 1)[0]  # all but the elapsed time


@pytest.mark.slow
def test_merge_rejects_parts_that_do_not_fit(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             files: dict[str, Path]) -> None:
    q, g = files["q"], files["g"]

    def shard(name: str, spec: str, *opts: str) -> Path:
        p = tmp_path / name
        rc, _, err = cli(capsys, "cmc", q, g, "-k", "1", "--shard", spec, "--out-part", p, *opts)
        assert rc == 0, err
        return p

    p0, p1 = shard("a0", "0/2"), shard("a1", "1/2")
    inner = shard("inner1", "1/2", "--metric", "inner")
    three = shard("b1", "1/3")
    cases = [
        ([p0], "a0", "shard(s) 1/2 missing"),
        ([p0, p1, p1], "a1", "shard 1/2 is given twice"),
        ([p0, inner], "inner1", 'options.metric: "inner" vs "cosine"'),
        ([p0, three], "b1", "is shard 1/3 but"),
        ([p0, q], "q.safetensors", "not an embeval partial-statistics file"),
        ([p0, tmp_path / "gone"], "gone", "no such file"),
    ]
    for files_given, named, message in cases:
        rc, out, err = cli(capsys, "merge", *files_given)
        assert rc == 2 and out == "", err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and named in lines[0] and message in lines[0], err
    rc, _, err = cli(capsys, "merge", p0, p1, "--predictions", tmp_path / "x.csv")
    assert rc == 2 and "--predictions: not an output of `embeval cmc`" in err
    rc, _, err = cli(capsys, "cmc", q, g, "--shard", "2/2")
    assert rc == 2 and "--shard 2/2: need 0 <= i < n" in err
    rc, _, err = cli(capsys, "cmc", q, g, "--shard", "0/2", "--per-query", tmp_path / "x.csv")
    assert rc == 2 and "give output files to `embeval merge`" in err


# ---------------------------------------------------------------- damaged and edited parts

EXE = shutil.which("embeval")
needs_exe = pytest.mark.skipif(EXE is None, reason="the embeval console script is not installed")


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command, in a subprocess."""
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=300,  # type: ignore[list-item]
                          cwd=cwd)


def rewrite(src: Path, dst: Path, *, forge: bool = False, header=None, meta=None,
            **tensors: torch.Tensor) -> Path:
    """Copy part ``src`` to ``dst`` with edited tensors / header (a function of the header dict)
    / metadata; ``forge``: recompute the checksum as someone who knows the format would."""
    with safe_open(str(src), framework="pt") as f:
        m = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    t.update(tensors)
    if header is not None:
        m["header"] = json.dumps(header(json.loads(m["header"])))
    m.update(meta or {})
    if forge:
        m["sha256"] = partials._digest(m, t)
    save_file(t, str(dst), metadata=m)
    return dst


@pytest.fixture(scope="module")
def halves(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The two parts of `embeval cmc Q G -k 1 5 --shard i/2`."""
    d = tmp_path_factory.mktemp("halves")
    for i in range(2):
        res = run("cmc", files["q"], files["g"], "-k", "1", "5", "--shard", f"{i}/2",
                  "--out-part", d / f"h{i}.safetensors")
        assert res.returncode == 0, res.stderr
    return [d / "h0.safetensors", d / "h1.safetensors"]


def assert_refused(res: subprocess.CompletedProcess[str], named: Path, message: str) -> None:
    assert res.returncode == 2 and res.stdout == "", res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(named) in lines[0] and message in lines[0], res.stderr


def with_shard(shard: object):  # noqa: ANN201
    return lambda h: {**h, "shard": shard}


@pytest.mark.slow
@needs_exe
def test_merge_refuses_edited_parts(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    halves: list[Path]) -> None:
    p0, p1 = halves
    with safe_open(str(p0), framework="pt") as f:
        hist, n_neg, ql = f.get_tensor("neg_hist"), f.get_tensor("n_neg"), f.get_tensor("query_labels")
    assert run("merge", p0, p1).returncode == 0
    bumped = hist.clone()
    bumped[int(torch.nonzero(hist)[0])] += 1  # one count changed, the header kept
    over = hist.clone()
    over[1] = n_neg[0] + 1  # query 0's bin 1: more negatives than it saw
    x = tmp_path / "x.safetensors"
    installed = [  # through the installed command: a naive edit, a forged one
        (dict(neg_hist=bumped), "do not match the checksum"),
        (dict(neg_hist=over, forge=True), "neg_hist counts more negatives than n_neg"),
    ]
    for edit, message in installed:
        assert_refused(run("merge", rewrite(p0, x, **edit), p1), x, message)
    in_process = [  # the same code path, faster
        (dict(query_labels=ql[:-1]), "do not match the checksum"),
        (dict(query_labels=ql[:-1], forge=True), "has shape"),
        (dict(header=with_shard("x")), "do not match the checksum"),
        (dict(header=with_shard("x"), forge=True), "'shard' must be a list of two integers, got 'x'"),
        (dict(header=with_shard([0]), forge=True), "'shard' must be a list of two integers"),
        (dict(header=with_shard([True, 2]), forge=True), "'shard' must be a list of two integers"),
        (dict(header=with_shard([2, 2]), forge=True), "needs 0 <= i < n"),
        (dict(header=lambda h: {**h, "gallery_range": None}, forge=True), "'gallery_range' must be"),
        (dict(header=lambda h: {**h, "job": {**h["job"], "ks": "1"}}, forge=True), "job.ks"),
        (dict(header=lambda h: {**h, "job": {**h["job"], "command": 3}}, forge=True), "job.command"),
        (dict(header=lambda h: {**h, "job": {**h["job"], "inputs": {}}}, forge=True),
         "job.inputs.query"),
        (dict(header=lambda h: [h], forge=True), "not a JSON object"),
        (dict(meta={"header": "{"}, forge=True), "damaged partial-statistics header"),
        (dict(meta={"embeval.partial": "1"}), "format '1' is not the one this embeval reads"),
    ]
    for edit, message in in_process:
        rc, out, err = cli(capsys, "merge", rewrite(p0, x, **edit), p1)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert str(x) in err and message in err, (message, err)


@pytest.mark.slow
def test_merge_refuses_edited_verify_parts(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           files: dict[str, Path]) -> None:
    """A verification part (trial counts) is checked as a ranking part is: checksum, then
    shapes, value ranges and agreement with the other parts."""
    parts = [tmp_path / f"v{i}.safetensors" for i in range(2)]
    for i, part in enumerate(parts):
        rc, _, err = cli(capsys, "verify", files["q"], files["g"], "--shard", f"{i}/2",
                         "--out-part", part)
        assert rc == 0, err
    p0, p1 = parts
    with safe_open(str(p0), framework="pt") as f:
        slots, keys, gen = f.get_tensor("imp_slots"), f.get_tensor("imp_keys"), f.get_tensor("gen_values")
    assert cli(capsys, "merge", p0, p1)[0] == 0
    bumped = slots.clone()
    bumped[int(torch.nonzero(slots)[0])] += 1
    keys_bumped = keys.clone()
    keys_bumped[int(torch.nonzero(keys)[0])] += 1
    moved = gen.clone()
    moved[0] = torch.nextafter(moved[0], torch.tensor(-1.0))
    x = tmp_path / "x.safetensors"
    for edit, message in [
        (dict(imp_slots=bumped), "do not match the checksum"),
        (dict(imp_slots=bumped, forge=True), "imp_slots and imp_keys count different numbers"),
        # consistent, but the parts now count one trial more than the query × gallery pairs
        (dict(imp_slots=bumped, imp_keys=keys_bumped, forge=True), "count more trials than"),
        (dict(imp_slots=-slots, imp_keys=-keys, forge=True), "negative counts"),
        (dict(gen_values=gen.flip(0), forge=True), "not strictly ascending"),
        (dict(gen_values=moved, forge=True), "genuine trials or set sizes differ"),
        (dict(imp_slots=slots[:-1], forge=True), "has shape"),
        (dict(header=lambda h: {**h, "n_query": 0}, forge=True), "n_query must be a positive"),
    ]:
        rc, out, err = cli(capsys, "merge", rewrite(p0, x, **edit), p1)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert str(x) in err and message in err, (message, err)


@pytest.mark.slow
@needs_exe
def test_merge_refuses_swapped_shard_claims(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            halves: list[Path]) -> None:
    p0, p1 = halves
    s0, s1 = tmp_path / "s0.safetensors", tmp_path / "s1.safetensors"
    rewrite(p0, s0, header=with_shard([1, 2]))
    rewrite(p1, s1, header=with_shard([0, 2]))
    assert_refused(cli_run(capsys, "merge", s0, s1), s0, "do not match the checksum")
    rewrite(p0, s0, header=with_shard([1, 2]), forge=True)
    rewrite(p1, s1, header=with_shard([0, 2]), forge=True)
    assert_refused(run("merge", s0, s1), s0,
                   "claims shard 1/2 of 900 gallery items, whose items are 450:900, but holds "
                   "items 0:450")


def test_parts_are_checked_against_each_other_and_their_values(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, halves: list[Path]) -> None:
    p0, p1 = halves
    with safe_open(str(p1), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in ("query_labels", "pos_scores", "n_neg", "max_neg",
                                           "gallery_labels")}
    x = tmp_path / "x.safetensors"
    nan = t["pos_scores"].clone()
    nan[3] = float("nan")
    max_neg = t["max_neg"].clone()
    max_neg[0] = float("inf")
    cases = [
        (dict(query_labels=t["query_labels"].flip(0)), "query_labels differ from those of"),
        (dict(pos_scores=nan), "pos_scores holds NaN or Inf"),
        (dict(pos_scores=t["pos_scores"].flip(0)), "pos_scores are not ascending"),
        (dict(n_neg=t["n_neg"] + 10_000), "n_neg exceeds the shard's 450 gallery items"),
        (dict(n_neg=-t["n_neg"]), "negative counts"),
        (dict(max_neg=max_neg), "max_neg holds NaN or +Inf"),
        (dict(gallery_labels=t["gallery_labels"].int()), "gallery_labels is torch.int32"),
        (dict(gallery_labels=t["gallery_labels"][1:]), "gallery_labels has shape [449]"),
        (dict(meta={"n_gallery": "901"}), "claims shard 1/2 of 901 gallery items"),
        (dict(meta={"metric": "euclid"}), "metric differs from job.options"),
    ]
    for edit, message in cases:
        rc, out, err = cli(capsys, "merge", p0, rewrite(p1, x, forge=True, **edit))
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert str(x) in err and message in err, (message, err)


# ---------------------------------------------------------------- reproducible files


def header_pairs(path: Path) -> tuple[list, bytes]:
    """The header's (key, value) pairs in file order, with ``info`` left out; the data bytes."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n], object_pairs_hook=list)
    assert header[0][0] == "__metadata__"
    meta = [(k, v) for k, v in header[0][1] if k != "info"]
    return [meta, *header[1:]], raw[8 + n:]


@pytest.mark.slow
@needs_exe
def test_same_run_twice_writes_the_same_bytes(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              files: dict[str, Path]) -> None:
    # a part differs between two runs only in its `info` (host, seconds: where and how long the
    # shard ran, kept for array-job diagnostics, outside the checksum and never compared);
    # run a is the installed command, run b this process (other hash seeds either way)
    q, g = files["q"], files["g"]
    for k, runner in (("a", run), ("b", lambda *args: cli_run(capsys, *args))):
        (tmp_path / k).mkdir()
        res = runner("cmc", q, g, "-k", "1", "--shard", "1/3", "--out-part", tmp_path / k / "p.safetensors")
        assert res.returncode == 0, res.stderr
        res = runner("pr", q, g, "--curves", tmp_path / k / "c.safetensors")
        assert res.returncode == 0, res.stderr
    a, b = tmp_path / "a", tmp_path / "b"
    assert header_pairs(a / "p.safetensors") == header_pairs(b / "p.safetensors")
    assert (a / "c.safetensors").read_bytes() == (b / "c.safetensors").read_bytes()
    with safe_open(str(a / "p.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert "seconds" in json.loads(meta["info"]) and "info" not in json.loads(meta["header"])
