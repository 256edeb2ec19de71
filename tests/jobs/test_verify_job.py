"""``run_job(Job("verify", ...))``, the library's verify run, against the installed command's
``--json`` output and output files on the sample data (the command line is the oracle: a
separate process that parses its flags, calls run_job and renders)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import embeval
from embeval.jobs import Hooks, Job, JobResult, run_job

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "digits"
Q, G = SAMPLE / "query.safetensors", SAMPLE / "gallery.safetensors"


def command(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["embeval", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def command_json(*args: object, cwd: Path) -> dict:
    r = command(*args, "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def same_as_printed(run: JobResult | None, want: dict) -> None:
    """``run`` holds what the command printed: metrics, options, sizes, inputs."""
    assert run is not None and type(run.result).__name__ == "VerifyResult"
    assert run.result.metrics == want["metrics"]
    assert run.result.options == want["options"]
    assert (run.result.n_query, run.result.n_gallery) == (want["n_query"], want["n_gallery"])
    assert run.job.extra["far_rule"] == want["far_rule"]
    assert run.inputs == want["inputs"]


def pairs_csv(path: Path, n: int = 300) -> Path:
    """``n`` listed trials over the sample files (query row i % 237, gallery row 7i % 482)."""
    path.write_text("query,gallery\n" + "".join(f"{i % 237},{7 * i % 482}\n" for i in range(n)))
    return path


def test_run_job_is_what_verify_prints_and_writes(tmp_path: Path) -> None:
    pairs = pairs_csv(tmp_path / "pairs.csv")
    (tmp_path / "cli").mkdir()
    want = command_json("verify", Q, G, "--pairs", pairs, "--folds", 5, "--far", 0.01, 0.1,
                        "--far-rule", "nearest", "--roc", "roc.csv", cwd=tmp_path / "cli")
    assert want["metrics"]["accuracy"] > 0.5 and want["far_rule"] == "nearest"
    notes: list[str] = []
    job = Job("verify", Q, [G], embeval.EvalOptions(), [1], pairs=pairs, folds=5,
              extra={"fars": [0.01, 0.1], "far_rule": "nearest", "templates": False,
                     "fold_thresholds": "scores"},
              outputs={"--roc": tmp_path / "roc.csv"})
    run = run_job(job, hooks=Hooks(note=notes.append))
    same_as_printed(run, want)
    assert run is not None and run.job is job and run.ci is None and notes == []
    assert (tmp_path / "roc.csv").read_bytes() == (tmp_path / "cli" / "roc.csv").read_bytes()


@pytest.mark.slow
def test_all_pairs_with_verify_s_defaults_is_what_the_command_prints(tmp_path: Path) -> None:
    """No ``extra``: the command's defaults (FARs 1e-6 … 1e-1, the step rule, no templates);
    one file as query and gallery: the same warning, as a note; the same --plot."""
    (tmp_path / "cli").mkdir()
    want = command_json("verify", Q, Q, "--plot", "roc.png", cwd=tmp_path / "cli")
    notes: list[str] = []
    run = run_job(Job("verify", Q, [Q], embeval.EvalOptions(), [1],
                      outputs={"--plot": tmp_path / "roc.png"}), hooks=Hooks(note=notes.append))
    same_as_printed(run, want)
    assert (tmp_path / "roc.png").read_bytes() == (tmp_path / "cli" / "roc.png").read_bytes()
    assert [n.split(",")[0] for n in notes] == [
        f"embeval: warning: {Q} is the query set and the gallery"]


@pytest.mark.slow
def test_one_file_finds_the_pairs_its_metadata_names(tmp_path: Path) -> None:
    g = embeval.load(G)
    lfw = embeval.save(tmp_path / "lfw.safetensors", g.embeddings, g.labels,
                       metadata={"pairs_file": "lfw_pairs.csv"})
    pairs_csv(tmp_path / "lfw_pairs.csv")
    want = command_json("verify", lfw, "--folds", 10, cwd=tmp_path)
    run = run_job(Job("verify", lfw, [], embeval.EvalOptions(), [1], folds=10))
    same_as_printed(run, want)
    assert run is not None and run.job.gallery == [lfw] and run.job.pairs == tmp_path / "lfw_pairs.csv"
    (tmp_path / "lfw_pairs.csv").unlink()
    with pytest.raises(embeval.InputFileError) as e:
        run_job(Job("verify", lfw, [], embeval.EvalOptions(), [1]))
    assert e.value.problem == ("the file of listed trials it names is not beside it: give pairs "
                               "CSV (it names 'lfw_pairs.csv')") and e.value.param == "pairs"


@pytest.mark.slow
def test_shards_merge_into_the_whole_run(tmp_path: Path) -> None:
    notes: list[str] = []
    parts = [tmp_path / f"verify.part-{i}-of-2.safetensors" for i in range(2)]
    for i, part in enumerate(parts):
        job = Job("verify", Q, [G], embeval.EvalOptions(), [1])
        assert run_job(job, shard=f"{i}/2", out_part=part, hooks=Hooks(note=notes.append)) is None
    assert [n.split(" (")[0] for n in notes] == ["embeval verify: shard 0/2", "embeval verify: shard 1/2"]
    merged = command_json("merge", *parts, cwd=tmp_path)
    whole = run_job(Job("verify", Q, [G], embeval.EvalOptions(), [1]))
    assert whole is not None and whole.result.metrics == merged["metrics"]


@pytest.mark.parametrize(("job", "shard", "message", "flags"), [
    (Job("verify", Q, [G], embeval.EvalOptions(exclude_self=True), [1], pairs=Path("p.csv")), None,
     "exclude_self/exclude_same_camera: with pairs the trials are the listed ones",
     "--exclude-self/--exclude-same-camera: with --pairs the trials are the listed ones"),
    (Job("verify", Q, [G], embeval.EvalOptions(), [1], extra={"templates": True}), "0/2",
     "templates: not with shard (listed pairs, templates and the nearest rule are computed in "
     "one process)", "--templates: not with --shard (listed pairs, templates and the nearest "
     "rule are computed in one process)"),
    (Job("verify", Q, [G], embeval.EvalOptions(), [1], extra={"far_rule": "nearest"}), "0/2",
     "far_rule nearest: not with shard", "--far-rule nearest: not with --shard"),
    (Job("verify", Q, [G], embeval.EvalOptions(), [1], outputs={"--roc": Path("r.csv")}), "0/2",
     "--roc: a shard run writes only", "--roc: a --shard run writes only"),
    (Job("verify", Q, [G], embeval.EvalOptions(), [1], folds=10), None,
     "folds: the LFW protocol splits listed trials: give pairs too",
     "--folds: the LFW protocol splits listed trials: give --pairs too"),
])
def test_a_wrong_combination_is_refused_before_any_file_is_read(
        job: Job, shard: str | None, message: str, flags: str, tmp_path: Path) -> None:
    """The parameters are named (the command line shows its flags); nothing is written."""
    from embeval.cli import flag_message

    with pytest.raises(embeval.OptionError) as e:
        run_job(job, shard=shard, out_part=tmp_path / "part.safetensors" if shard else None)
    assert str(e.value).startswith(message) and flag_message(e.value).startswith(flags)
    assert list(tmp_path.iterdir()) == []
