"""--qe / --dba shards merged on the command line print and write what the whole run does."""

from __future__ import annotations

from pathlib import Path

from helpers.cli import cli, without_time

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "digits"


def test_qe_dba_shards_merge_to_the_whole_run(capsys, tmp_path) -> None:
    q, g = SAMPLE / "query.safetensors", SAMPLE / "gallery.safetensors"
    flags = ["--qe", "average", "--qe-k", "3", "--dba", "2"]
    rc, whole, err = cli(capsys, "cmc", q, g, *flags, "--per-query", tmp_path / "whole.csv", "--json")
    assert rc == 0, err
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"p{i}.safetensors")
        assert cli(capsys, "cmc", q, g, *flags, "--shard", f"{i}/2", "--out-part", parts[-1])[0] == 0
    rc, merged, err = cli(capsys, "merge", *parts, "--per-query", tmp_path / "merged.csv", "--json")
    assert rc == 0, err
    assert without_time(merged) == without_time(whole)
    # the per-query rows too: no hardest-negative columns computed from the raw embeddings
    assert (tmp_path / "merged.csv").read_text() == (tmp_path / "whole.csv").read_text()
    assert "hard_neg_index" not in (tmp_path / "whole.csv").read_text().splitlines()[0]
