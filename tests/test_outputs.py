"""embeval.outputs: every output is checked against the inputs, staged and put in place whole.

Through the installed command where the process matters (umask, file-size limit, device
files); in this process (``embeval.cli.main``) for the many refusals.
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest
import torch
from helpers.cli import cli
from helpers.images import image_folder

import embeval
from embeval.errors import InputFileError
from embeval.outputs import atomic_path, check_outputs, transaction

EXE = shutil.which("embeval")


def run(*args: object, cwd: Path | None = None, umask: int = 0o022,
        fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    def limits() -> None:
        os.umask(umask)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          preexec_fn=limits, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("outputs")
    g = torch.Generator().manual_seed(5)
    q = embeval.save(d / "q.safetensors", torch.randn(30, 8, generator=g),
                     torch.randint(0, 5, (30,), generator=g))
    gal = embeval.save(d / "g.safetensors", torch.randn(60, 8, generator=g),
                       torch.randint(0, 5, (60,), generator=g))
    png = d / "g.png"  # an embedding file whose name a plot could take (files are read by content)
    png.write_bytes(gal.read_bytes())
    return {"q": q, "g": gal, "png": png, "dir": d}


def one_line_error(rc: int, err: str, *names: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], err
    return lines[0]


@pytest.mark.parametrize(("command", "option", "victim"), [
    ("cmc", "--per-query", "q"), ("pr", "--per-query", "g"), ("pr", "--curves", "q"),
    ("knn", "--predictions", "g"), ("score", "--out", "q"), ("pr", "--plot", "png"),
    ("cmc", "--plot", "png"),
])
def test_an_output_never_overwrites_an_input(capsys, files, command, option, victim):
    before = files[victim].read_bytes()
    gallery = files["png"] if victim == "png" else files["g"]
    rc, out, err = cli(capsys, command, files["q"], gallery, option, files[victim])
    assert "refusing to overwrite an input" in one_line_error(rc, err, option, files[victim].name)
    assert files[victim].read_bytes() == before and out == ""


def test_not_through_a_symlink_either(capsys, files, tmp_path):
    link = tmp_path / "innocent.csv"
    link.symlink_to(files["g"])
    before = files["g"].read_bytes()
    rc, _, err = cli(capsys, "cmc", files["q"], files["g"], "--per-query", link)
    one_line_error(rc, err, "refusing to overwrite an input")
    assert files["g"].read_bytes() == before and link.is_symlink()


def test_shard_part_and_merge_outputs_are_checked_too(capsys, files, tmp_path):
    rc, _, err = cli(capsys, "cmc", files["q"], files["g"], "--shard", "0/2", "--out-part", files["g"])
    one_line_error(rc, err, "--out-part", "refusing to overwrite an input")
    parts = [tmp_path / f"p{i}.safetensors" for i in range(2)]
    for i, p in enumerate(parts):
        assert cli(capsys, "cmc", files["q"], files["g"], "--shard", f"{i}/2", "--out-part", p)[0] == 0
    before = parts[1].read_bytes()
    rc, _, err = cli(capsys, "merge", *parts, "--per-query", parts[1])
    one_line_error(rc, err, "--per-query", "refusing to overwrite an input")
    assert parts[1].read_bytes() == before


def test_two_outputs_may_not_name_one_file(capsys, files, tmp_path):
    target = tmp_path / "both"
    rc, _, err = cli(capsys, "pr", files["q"], files["g"], "--per-query", target, "--curves", target)
    one_line_error(rc, err, "the same file is also given to")
    assert not target.exists()


def test_missing_folders_are_created(capsys, files, tmp_path):
    part = tmp_path / "parts" / "deep" / "cmc.0.safetensors"
    rc, _, err = cli(capsys, "cmc", files["q"], files["g"], "--shard", "0/2", "--out-part", part)
    assert rc == 0, err
    assert part.is_file()


def test_extract_output_onto_its_image_list_is_refused(capsys, tmp_path):
    images = image_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in
                                                enumerate(sorted(images.rglob("*.png")))))
    before = listing.read_bytes()
    rc, _, err = cli(capsys, "extract", "embeval-small", listing, "-o", listing, "--workers", "0")
    one_line_error(rc, err, "refusing to overwrite an input")
    assert listing.read_bytes() == before


# ---- special files: written into, never replaced -------------------------------------------

def _device(path: Path, major: int, minor: int) -> Path:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot create a device node here ({e})")
    return path


def test_a_device_is_written_into_not_replaced(capsys, files, tmp_path):
    null = _device(tmp_path / "null", 1, 3)
    rc, _, err = cli(capsys, "cmc", files["q"], files["g"], "--per-query", null)
    assert rc == 0, err
    assert stat.S_ISCHR(null.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["null"]  # no temporary left beside it


def test_a_full_device_fails_with_one_line_and_no_other_output(capsys, files, tmp_path):
    full = _device(tmp_path / "full", 1, 7)
    other = tmp_path / "curves.safetensors"
    rc, _, err = cli(capsys, "pr", files["q"], files["g"], "--per-query", full, "--curves", other)
    one_line_error(rc, err, "full", "No space left on device")
    assert stat.S_ISCHR(full.stat().st_mode) and not other.exists()


@pytest.mark.slow
def test_a_fifo_is_written_into(files, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    res = run("cmc", files["q"], files["g"], "--per-query", fifo)
    reader.join(timeout=60)
    assert res.returncode == 0, res.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert got and got[0].startswith(b"index,label")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["-", "/dev/stdout"])
def test_standard_output_for_pipelines(files, target):
    res = run("knn", files["q"], files["g"], "-k", "3", "--predictions", target, "--json")
    assert res.returncode == 0, res.stderr
    rows = list(csv.reader(io.StringIO(res.stdout)))  # the CSV alone: the JSON went to stderr
    assert rows[0] == ["index", "label", "prediction", "correct"] and len(rows) == 31
    assert json.loads(res.stderr.strip().splitlines()[-1])["command"] == "knn"


# ---- the process: umask, file-size limit ------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_respect_the_umask(files, tmp_path, umask, mode):
    out = tmp_path / "pq.csv"
    res = run("cmc", files["q"], files["g"], "--per-query", out, umask=umask)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == mode


@pytest.mark.slow
def test_a_full_disk_gives_one_line_and_no_output(files, tmp_path):
    """RLIMIT_FSIZE makes the large curves file fail (EFBIG) after the small CSV was written."""
    q = embeval.save(tmp_path / "q.safetensors", torch.randn(100, 4), torch.arange(100) % 5)
    g = embeval.save(tmp_path / "g.safetensors", torch.randn(400, 4), torch.arange(400) % 5)
    out = tmp_path / "out"
    out.mkdir()
    small, large = out / "pq.csv", out / "curves.safetensors"
    res = run("pr", q, g, "--per-query", small, "--curves", large, fsize=32768)
    one_line_error(res.returncode, res.stderr, large.name, "cannot write")
    assert list(out.iterdir()) == []


# ---- the opener itself ------------------------------------------------------------------------

def test_a_replaced_file_keeps_its_mode(tmp_path):
    p = tmp_path / "x"
    p.write_text("old")
    p.chmod(0o640)
    with atomic_path(p) as tmp:
        tmp.write_text("new")
    assert p.read_text() == "new" and stat.S_IMODE(p.stat().st_mode) == 0o640


def test_transaction_puts_all_or_nothing_in_place(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(RuntimeError), transaction():
        with atomic_path(a) as tmp:
            tmp.write_text("a")
        assert not a.exists()  # staged, not yet in place
        raise RuntimeError("the second output failed")
    assert list(tmp_path.iterdir()) == []
    with transaction():
        for p in (a, b):
            with atomic_path(p) as tmp:
                tmp.write_text(p.name)
    assert a.read_text() == "a" and b.read_text() == "b"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a", "b"]


def test_check_outputs_refusals(tmp_path):
    inp = tmp_path / "in"
    inp.write_text("x")
    hard = tmp_path / "hardlink"
    os.link(inp, hard)
    with pytest.raises(InputFileError, match="refusing to overwrite an input"):
        check_outputs({"out": hard}, inputs=[inp])
    with pytest.raises(InputFileError, match="is a folder"):
        check_outputs({"out": tmp_path})
    check_outputs({"a": "/dev/null", "b": "/dev/null", "c": "-", "d": None}, inputs=[inp])


# every writer: a link at the output name (to an unrelated file) is refused, its target untouched
@pytest.mark.parametrize(("command", "option", "name"), [
    ("cmc", "--per-query", "pq.csv"), ("pr", "--curves", "curves.csv"), ("cmc", "--plot", "cmc.png"),
    ("cmc", "--save-result", "r.safetensors"), ("verify", "--roc", "roc.csv"),
    ("verify", "--plot", "roc.svg"), ("score", "--out", "s.safetensors"),
    ("report", "--out", "r.html"), ("cmc", "--out-part", "p.safetensors"),
])
def test_no_writer_follows_a_link_at_its_output_name(capsys, files, tmp_path, command, option, name):
    victim, link = tmp_path / "victim.txt", tmp_path / name
    victim.write_text("keep me\n")
    link.symlink_to(victim)
    extra = ["--no-ci"] if command == "report" else ["--shard", "0/1"] if option == "--out-part" else []
    rc, _, err = cli(capsys, command, files["q"], files["g"], option, link, *extra, "--device", "cpu")
    assert "symbolic link" in one_line_error(rc, err, str(link))
    assert victim.read_text() == "keep me\n" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "victim.txt"])


def test_atomic_path_refuses_a_link_but_writes_through_dev_stdout_links(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputFileError, match="symbolic link"), atomic_path(tmp_path / "link") as tmp:
        tmp.write_text("x")
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "null").symlink_to(os.devnull)  # a link to a character device: written into
    with atomic_path(tmp_path / "null") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "null").is_symlink()


def test_dev_stdout_redirected_to_a_file_is_written_into_not_refused(files, tmp_path):
    target = tmp_path / "out.txt"
    with open(target, "w") as f:  # the shell's `> out.txt`: /dev/stdout is a link to that file
        res = subprocess.run([EXE, "cmc", str(files["q"]), str(files["g"]), "--per-query",
                              "/dev/stdout"], stdout=f, stderr=subprocess.PIPE, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    text = target.read_text()
    assert text.startswith("index,label,") and "rank1" not in text  # the CSV alone
    assert "rank1" in res.stderr  # an output on stdout sends the table to stderr


@pytest.mark.slow
def test_extract_out_dir_refuses_a_fifo_or_link_at_its_file_names(tmp_path):
    images = image_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "query.safetensors")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (out / "gallery.safetensors").symlink_to(victim)
    for flag, name in (("--query", "query"), ("--gallery", "gallery")):
        try:
            res = subprocess.run([EXE, "extract", "embeval-small", flag, str(images), "--out-dir",
                                  str(out), "--workers", "0"], capture_output=True, text=True,
                                 timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("extract blocked on a FIFO in --out-dir")
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and f"{name}.safetensors" in lines[0], res.stderr
    assert victim.read_text() == "keep me\n"


def test_append_text_never_follows_a_link_nor_blocks_on_a_fifo(tmp_path):
    from embeval.outputs import append_text

    log = tmp_path / "metrics.jsonl"
    append_text(log, "a\n")
    append_text(log, "b\n")
    assert log.read_text() == "a\nb\n"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "link.jsonl").symlink_to(victim)
    with pytest.raises(InputFileError, match="symbolic link"):
        append_text(tmp_path / "link.jsonl", "x\n")
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(InputFileError, match="not a regular file"):
        append_text(tmp_path / "fifo.jsonl", "x\n")  # nobody reads it: refused, not blocked
    assert victim.read_text() == "keep me\n"


@pytest.fixture
def fifo_with_reader(tmp_path):  # noqa: ANN201
    """A FIFO whose read end is held open: a writer that wrongly writes into it does not block
    (the pipe buffers it), so the old code fails the test instead of hanging it."""
    made: list[int] = []

    def make(path: Path) -> Path:
        os.mkfifo(path)
        made.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        return path
    yield make
    for fd in made:
        os.close(fd)


@pytest.mark.parametrize("kind", ["fifo", "device link"])
@pytest.mark.parametrize("writer", ["state.pt", "last.safetensors", "config.yaml", "metrics.jsonl"])
def test_train_run_files_are_members_refusing_a_fifo_or_a_device(tmp_path, fifo_with_reader, kind, writer):
    from embeval.extract.checkpoint import save_checkpoint
    from embeval.extract.models import build_backbone
    from embeval.train import state as S
    from embeval.train.config import config_from, save_config

    path = tmp_path / writer
    if kind == "fifo":
        fifo_with_reader(path)
    else:
        path.symlink_to(os.devnull)  # a device behind a link: written into by a plain output name
    arch = {"backbone": "embeval-small", "embedding_dim": 8, "widths": [4, 8], "num_classes": 3}
    write = {
        "state.pt": lambda: S.save_state(path, {"epoch": 1}),
        "last.safetensors": lambda: save_checkpoint(
            path, build_backbone(arch), architecture=arch, member=True,
            preprocessing={"size": [8, 8], "mean": [0.5] * 3, "std": [0.5] * 3}),
        "config.yaml": lambda: save_config(path, config_from(("cli", {"out_dir": str(tmp_path)}))),
        "metrics.jsonl": lambda: S.check_run_files(tmp_path, option="resume"),
    }[writer]
    with pytest.raises(InputFileError, match="not a regular file" if kind == "fifo" else "symbolic link"):
        write()
    assert [p.name for p in tmp_path.iterdir()] == [writer]  # nothing staged left behind


def test_train_resume_refuses_a_fifo_or_device_at_a_run_file_before_training(capsys, tmp_path,
                                                                             fifo_with_reader):
    data = tmp_path / "data"
    for part, n in (("train", 3), ("query", 1), ("gallery", 2)):
        image_folder(data / part, {"a": n, "b": n, "c": n}, size=(12, 12), seed=len(part))
    run_dir = tmp_path / "run"
    args = ["--size", "12", "12", "--widths", "4,8", "--embedding-dim", "8", "--batch-size", "9",
            "--workers", "0", "-k", "1", "--device", "cpu"]
    rc, _, err = cli(capsys, "train", data / "train", "--query", data / "query", "--gallery",
                     data / "gallery", "--out-dir", run_dir, "--epochs", "1", *args)
    assert rc == 0, err
    state = (run_dir / "state.pt").read_bytes()
    (run_dir / "best.safetensors").unlink()
    (run_dir / "last.safetensors").unlink()
    (run_dir / "last.safetensors").symlink_to(os.devnull)
    fifo_with_reader(run_dir / "best.safetensors")
    for name in ("last.safetensors", "best.safetensors"):
        rc, _, err = cli(capsys, "train", "--resume", run_dir, "--epochs", "2")
        line = one_line_error(rc, err, str(run_dir / name), "resume")
        assert "symbolic link" in line if name.startswith("last") else "not a regular file" in line
        assert (run_dir / "state.pt").read_bytes() == state  # refused before any epoch
        (run_dir / name).unlink()
