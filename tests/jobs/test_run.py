"""embeval.jobs.run_job, the library's whole run, against the installed command's ``--json``
output and output files on the sample data (the command line is the oracle: a separate process
that parses its flags, calls run_job and renders)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import embeval
from embeval.jobs import Hooks, Job, JobResult, run_job
from embeval.options import IntervalOptions

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "digits"
Q, G = SAMPLE / "query.safetensors", SAMPLE / "gallery.safetensors"


def command_json(*args: object, cwd: Path) -> dict:
    r = subprocess.run(["embeval", *map(str, args), "--json"], cwd=cwd, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_run_job_is_what_cmc_prints_and_writes(tmp_path: Path) -> None:
    (tmp_path / "cli").mkdir()
    want = command_json("cmc", Q, G, "-k", 1, 5, "--metric", "euclid", "--per-query", "pq.csv",
                        cwd=tmp_path / "cli")
    notes: list[str] = []
    job = Job("cmc", Q, [G], embeval.EvalOptions(metric="euclid"), [1, 5],
              outputs={"--per-query": tmp_path / "pq.csv"})
    run = run_job(job, hooks=Hooks(note=notes.append))
    assert isinstance(run, JobResult) and run.job is job and run.ci is None and notes == []
    assert {k: run.result.metrics[k] for k in want["metrics"]} == want["metrics"]  # the table's
    assert run.result.options == want["options"]
    assert (run.result.n_query, run.result.n_gallery, run.result.n_valid) == \
        (want["n_query"], want["n_gallery"], want["n_valid"])
    assert run.inputs == want["inputs"]
    assert (tmp_path / "pq.csv").read_bytes() == (tmp_path / "cli" / "pq.csv").read_bytes()


@pytest.mark.slow
def test_run_job_identify_with_intervals_is_what_identify_prints(tmp_path: Path) -> None:
    want = command_json("identify", Q, G, "-k", 1, "--fpir", 0.1, "--ci", 0.9, "--bootstrap", 50,
                        cwd=tmp_path)
    job = Job("identify", str(Q), [str(G)], embeval.EvalOptions(), [1],
              extra={"fpirs": [0.1], "fpir_rule": "embeval"},
              intervals=IntervalOptions(0.9, 50, 0, "query"))
    run = run_job(job)
    assert run is not None and type(run.result).__name__ == "IdentifyResult"
    shown = {k: v for k, v in want["metrics"].items() if v is not None}  # null: omitted, with why
    assert {k: run.result.metrics[k] for k in shown} == shown
    assert run.result.omitted == want.get("omitted", {})
    assert run.inputs == want["inputs"]
    assert want["ci"] and {k: list(v) for k, v in run.ci.to_json().items()} == want["ci"]


def test_a_shard_run_writes_its_part_and_returns_none(tmp_path: Path) -> None:
    notes: list[str] = []
    parts = [tmp_path / f"p{i}.safetensors" for i in range(2)]
    for i, part in enumerate(parts):
        job = Job("cmc", Q, [G], embeval.EvalOptions(device="cpu"), [1, 5])
        assert run_job(job, shard=f"{i}/2", out_part=part, hooks=Hooks(note=notes.append)) is None
    assert [n.split(" (")[0] for n in notes] == ["embeval cmc: shard 0/2", "embeval cmc: shard 1/2"]
    whole = run_job(Job("cmc", Q, [G], embeval.EvalOptions(device="cpu"), [1, 5]))
    assert whole is not None
    assert embeval.merge_partials(parts).metrics == whole.result.metrics


def test_a_wrong_option_names_the_parameter_and_the_command_line_its_flag(tmp_path: Path) -> None:
    from embeval.cli import flag_message

    job = Job("score", Q, [G], embeval.EvalOptions(), [1], out_topk=3)
    with pytest.raises(embeval.OptionError, match="^out_topk: needs out FILE") as e:
        run_job(job)
    assert flag_message(e.value).startswith("--out-topk: needs --out FILE (or --shard i/n,")
