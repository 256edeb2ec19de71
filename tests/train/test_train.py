"""The training engine (embeval.train), its config, losses and the ``embeval train`` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.images import write_bad_image
from PIL import Image
from safetensors.torch import load_file

from embeval.cli import flag_message, main
from embeval.errors import OptionError
from embeval.extract import ExtractOptions, embed_images
from embeval.extract.checkpoint import load_checkpoint
from embeval.extract.images import Preprocessing, list_images
from embeval.extract.models import LoadedModel
from embeval.safe_load import load_tensors
from embeval.train import TrainInterrupted, train
from embeval.train.config import TrainConfig, config_from, load_config_file, save_config
from embeval.train.losses import batch_hard_triplet, pk_batches

TESTS = Path(__file__).resolve().parents[1]  # tests/: helpers.models importable
TINY = dict(size=[12, 12], widths=[4, 8], embedding_dim=8, batch_size=8, workers=0, lr=0.1,
            ks=[1, 5], epochs=2)
TINY_ARGS = ["--size", "12", "12", "--widths", "4,8", "--embedding-dim", "8", "--batch-size", "8",
             "--workers", "0", "--lr", "0.1", "-k", "1", "5", "--epochs", "2"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: fast on a busy machine, and the same as the subprocesses."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def class_images(root: Path, per_class: int, *, seed: int, classes: int = 4) -> Path:
    """``root/c<k>/<i>.png``: 12 x 12 images whose colour depends on the class, plus noise."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        colour = np.array([(c * 70) % 256, (c * 150 + 40) % 256, (255 - c * 60) % 256])
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 60, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    class_images(root / "train", 6, seed=0)
    class_images(root / "query", 2, seed=1)
    class_images(root / "gallery", 3, seed=2)
    return root


def config(data: Path, out: Path, **kw) -> TrainConfig:
    paths = {"train": str(data / "train"), "query": str(data / "query"),
             "gallery": str(data / "gallery"), "out_dir": str(out)}
    return config_from(("cli", {**paths, **TINY, **kw}))


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["embeval", *args], cwd=cwd, env=cli_env(env), capture_output=True,
                          text=True, timeout=120)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(extra or {})}


# ---------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted 3-epoch run (cosine classifier, triplet + P x K, flips)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    cfg = config(data, out, epochs=3, classifier="cosine", triplet_weight=1.0, instances=2,
                 hflip=True)
    return cfg, train(cfg)


@pytest.mark.slow
def test_loss_decreases_and_every_epoch_is_recorded(reference):
    cfg, result = reference
    losses = [r["train_loss"] for r in result.history]
    assert losses[2] < losses[0], losses
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records == result.history
    for r in records:
        assert {"train_loss", "train_accuracy", "rank1", "rank5", "mAP", "mINP", "lr"} <= set(r)
        assert 0 <= r["mAP"] <= 1 and r["n_query"] == 8 and r["n_gallery"] == 12
    best = max(records, key=lambda r: r["mAP"])  # first of equal values wins
    assert result.best == {"metric": "mAP", "value": best["mAP"], "epoch": best["epoch"]}
    assert [r["epoch"] for r in records if r["best"]][-1] == best["epoch"]
    names = sorted(p.name for p in result.run_dir.iterdir())
    assert names == ["best.safetensors", "config.yaml", "last.safetensors", "metrics.jsonl",
                     "state.pt"]
    saved = config_from((str(result.run_dir / "config.yaml"),
                         load_config_file(result.run_dir / "config.yaml")))
    assert saved == cfg  # the fixture's paths are absolute already


@pytest.mark.parametrize("stop_at,lines", [(2, 0), (4, 1), (6, 1)],
                         ids=["mid-epoch-1", "after-epoch-1", "mid-epoch-2"])
def test_stop_and_resume_gives_identical_weights(data, tmp_path, reference, stop_at, lines):
    cfg, ref = reference
    run = tmp_path / "run"
    cfg = config_from(("cli", {**cfg.to_dict(), "out_dir": str(run)}))
    polls = []

    def should_stop() -> str | None:  # polled after each step (3 an epoch) and each epoch
        polls.append(1)
        return "SIGINT" if len(polls) >= stop_at else None

    with pytest.raises(TrainInterrupted, match=f"resume with `embeval train --resume {run}`"):
        train(cfg, should_stop=should_stop)
    metrics = run / "metrics.jsonl"
    assert (len(metrics.read_text().splitlines()) if metrics.exists() else 0) == lines
    result = train(cfg, resume=True)
    assert_same_weights(run, ref.run_dir)
    assert result.history == [{**r, "seconds": result.history[i]["seconds"]}
                              for i, r in enumerate(ref.history)]
    state = load_tensors(run / "state.pt")
    assert state["epoch"] == 3 and state["step"] == 0


@pytest.mark.slow
def test_checkpoint_loads_in_extract_and_cmc_gives_the_epoch_metrics(reference, data, tmp_path):
    cfg, result = reference
    best = result.run_dir / "best.safetensors"
    r = run_cli("extract", str(best), "--query", str(data / "query"), "--gallery",
                str(data / "gallery"), "--out-dir", "emb", "--workers", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("cmc", "emb/query.safetensors", "emb/gallery.safetensors", "-k", "1", "5", "--json",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    epoch = next(rec for rec in result.history if rec["epoch"] == result.best["epoch"])
    got = json.loads(r.stdout)["metrics"]
    for key in ("rank1", "rank5", "mAP", "mINP"):
        assert got[key] == pytest.approx(epoch[key], abs=1e-9), key
    # last.safetensors is the in-process model's embedding network
    model, prep = load_checkpoint(result.run_dir / "last.safetensors")
    assert prep == Preprocessing(size=(12, 12))
    images = list_images(data / "query")
    opts = ExtractOptions(prep, device="cpu", workers=0)
    direct = embed_images(LoadedModel(result.model.embedder.eval(), prep, "m", "m"), images, opts)
    loaded = embed_images(LoadedModel(model, prep, "m", "m"), images, opts)
    torch.testing.assert_close(loaded.embeddings, direct.embeddings, rtol=0, atol=0)
    assert direct.embeddings.shape == (8, 8)


def test_market1501_layout_with_the_same_camera_protocol(tmp_path):
    """Flat re-ID folders: labels and cameras from file names, same-camera matches dropped."""
    rng = np.random.default_rng(0)

    def write(folder: str, person: int, camera: int, i: int) -> None:
        colour = np.array([person * 60 % 256, 255 - person * 50, 128])
        pixels = np.clip(colour + rng.normal(0, 40, (12, 12, 3)), 0, 255).astype(np.uint8)
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / folder / f"{person:04d}_c{camera}s1_{i:06d}_00.png")

    for person in (1, 2, 3, 4):
        for i in range(4):
            write("train", person, 1 + i % 2, i)
    for person in (5, 6):
        write("query", person, 1, 0)
        for i, camera in enumerate((1, 2, 2)):
            write("gallery", person, camera, i)
    cfg = config_from(("cli", {**TINY, "train": str(tmp_path / "train"),
                               "query": str(tmp_path / "query"), "gallery": str(tmp_path / "gallery"),
                               "out_dir": str(tmp_path / "run"), "layout": "market1501",
                               "exclude_same_camera": True, "epochs": 1, "ks": [1, 2]}))
    [record] = train(cfg).history
    assert (record["n_query"], record["n_gallery"], record["n_valid"]) == (2, 6, 2)
    assert json.loads(load_checkpoint_meta(tmp_path / "run" / "last.safetensors")["label_names"]) == [
        "1", "2", "3", "4"]


def load_checkpoint_meta(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


# ---------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_resume_extends_a_run_like_an_uninterrupted_one(data, tmp_path):
    full = train(config(data, tmp_path / "full", schedule="constant"))  # in-process, 2 epochs
    common = ["train", str(data / "train"), "--query", str(data / "query"), "--gallery",
              str(data / "gallery"), *TINY_ARGS, "--schedule", "constant"]
    r = run_cli(*common, "--out-dir", "part", "--epochs", "1", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["command"] == "train" and [e["epoch"] for e in summary["epochs"]] == [1]
    assert summary["epochs"][0]["train_loss"] == full.history[0]["train_loss"]
    r = run_cli("train", "--resume", "part", "--epochs", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    log = r.stderr.splitlines()  # not a terminal: plain log lines, no bar
    assert "mAP" in r.stdout and len(log) == 2 and log[0].startswith("train: resuming part at epoch 2/2")
    assert_same_weights(tmp_path / "full", tmp_path / "part")
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 2
    assert yaml.safe_load((tmp_path / "part" / "config.yaml").read_text())["epochs"] == 2


SLOW = dict(backbone="helpers.models:slow_net", batch_size=4)


@pytest.fixture(scope="module")
def slow_reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slow") / "ref"
    train(config(data, out, **SLOW))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                      (signal.SIGKILL, -signal.SIGKILL)])
def test_cli_signal_mid_epoch_saves_and_resumes_exactly(data, tmp_path, slow_reference, sig, code):
    ready = tmp_path / "ready"
    args = ["train", str(data / "train"), "--query", str(data / "query"), "--gallery",
            str(data / "gallery"), *TINY_ARGS, "--backbone", SLOW["backbone"], "--batch-size", "4",
            "--out-dir", "run"]
    proc = subprocess.Popen(["embeval", *args], cwd=tmp_path,
                            env=cli_env({"EMBEVAL_TEST_READY": str(ready)}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)  # during step 8 of 12: epoch 2 of 2, step 2 of 6
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    if sig != signal.SIGKILL:  # a hard kill resumes from the end of epoch 1
        log = err.strip().splitlines()  # the start and epoch-1 log lines (not a terminal), then why
        assert out == "" and len(log) == 3 and log[-1] == (
            f"embeval: {sig.name}: stopped in epoch 2 after step 2; resume with "
            "`embeval train --resume run`")
    run = tmp_path / "run"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    saved = config_from((str(run / "config.yaml"), load_config_file(run / "config.yaml")))
    train(saved, resume=True)
    assert_same_weights(slow_reference, run)
    model, _ = load_checkpoint(run / "best.safetensors")  # module:callable + neck
    assert model(torch.zeros(2, 3, 12, 12)).shape == (2, 8)


def cli_error(capsys, *args: str) -> str:
    """Run ``embeval ARGS`` in-process; expect exit 2 and return the one stderr line."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    assert info.value.code == 2, captured.err
    *log, line = captured.err.strip().splitlines()
    # an error found once training started follows the plain start line (stderr is not a terminal)
    assert len(log) <= 1 and all(x.startswith("train: ") for x in log), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return line


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown key", "bad value", "bad yaml", "bad choice",
                                  "missing folder", "empty folder", "one class", "bad image",
                                  "existing run", "resume nothing", "resume with options",
                                  "cpu bf16", "k too large"])
def test_cli_bad_input_exits_2_with_one_line(data, tmp_path, capsys, monkeypatch, case):
    train_dir, extra = str(data / "train"), []
    cfg = tmp_path / "c.yaml"
    expected = {
        "unknown key": f"embeval: error: {cfg}: unknown key 'lrr'",
        "bad value": f"embeval: error: {cfg}: 'lr': expected a float, got 'fast'",
        "bad yaml": f"embeval: error: {cfg}: not valid YAML",
        "bad choice": f"embeval: error: {cfg}: 'optimizer': unknown value 'adam' (choose from",
        "missing folder": f"embeval: error: {tmp_path / 'nope'}: no such folder",
        "empty folder": f"embeval: error: {tmp_path / 'empty'}: no images found",
        "one class": f"embeval: error: {tmp_path / 'one'}: training needs at least 2 classes",
        "bad image": f"embeval: error: {tmp_path / 'bad' / 'c1' / 'zz.png'}: cannot decode image",
        "existing run": "embeval: error: --out-dir run: already holds a run (config.yaml); use "
                        "--resume run",
        "resume nothing": f"embeval: error: {Path('none') / 'state.pt'}: --resume: no state file",
        "resume with options": "embeval: error: --resume run: --lr cannot change a run",
        "cpu bf16": "embeval: error: --precision bf16: mixed precision needs a CUDA device",
        "k too large": "embeval: error: -k 50: larger than the gallery (12 images)",
    }[case]
    if case == "unknown key":
        cfg.write_text("lrr: 0.1\n")
    elif case == "bad value":
        cfg.write_text("lr: fast\n")
    elif case == "bad yaml":
        cfg.write_text("lr: [0.1\n")
    elif case == "bad choice":
        cfg.write_text("optimizer: adam\n")
    elif case == "missing folder":
        train_dir = str(tmp_path / "nope")
    elif case == "empty folder":
        (tmp_path / "empty" / "a").mkdir(parents=True)
        train_dir = str(tmp_path / "empty")
    elif case == "one class":
        train_dir = str(class_images(tmp_path / "one", 3, seed=0, classes=1))
    elif case == "bad image":
        train_dir = str(class_images(tmp_path / "bad", 3, seed=0, classes=2))
        write_bad_image(tmp_path / "bad" / "c1" / "zz.png")
        extra = ["--batch-size", "16"]
    elif case == "resume nothing":
        (tmp_path / "none").mkdir()
    elif case in ("existing run", "resume with options"):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.yaml").write_text("epochs: 1\n")
    elif case == "cpu bf16":
        extra = ["--precision", "bf16", "--device", "cpu"]
    elif case == "k too large":
        extra = ["-k", "1", "50"]
    monkeypatch.chdir(tmp_path)
    if case.startswith("resume"):
        target = "none" if case == "resume nothing" else "run"
        args = ["train", "--resume", target] + (["--lr", "0.2"] if case == "resume with options" else [])
    else:
        args = ["train", train_dir, "--query", str(data / "query"), "--gallery",
                str(data / "gallery"), "--out-dir", "run", *TINY_ARGS, *extra]
        if cfg.exists():
            args += ["--config", str(cfg)]
    assert cli_error(capsys, *args).startswith(expected)


def test_cli_unreadable_folder_exits_2(data, tmp_path, capsys, monkeypatch):
    """Permissions do not stop root, so the operating system's refusal is simulated."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_iterdir = Path.iterdir

    def iterdir(self: Path):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    line = cli_error(capsys, "train", str(locked), "--query", str(data / "query"), "--gallery",
                     str(data / "gallery"), "--out-dir", str(tmp_path / "run"), *TINY_ARGS)
    assert line == f"embeval: error: {locked}: cannot read (Permission denied)"
    assert not (tmp_path / "run").exists()


def test_cli_tensorboard_missing_is_a_clear_error_or_writes_logs(data, tmp_path, capsys):
    args = ["train", str(data / "train"), "--query", str(data / "query"), "--gallery",
            str(data / "gallery"), "--out-dir", str(tmp_path / "run"), *TINY_ARGS, "--epochs", "1",
            "--tensorboard"]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        line = cli_error(capsys, *args)
        assert line == ("embeval: error: --tensorboard needs the tensorboard package: "
                        "pip install 'embeval[tensorboard]'")
        assert not (tmp_path / "run").exists()
        return
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0
    assert any((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))


# ---------------------------------------------------------------- config, losses, samplers


def test_config_file_yaml_and_toml_with_cli_precedence(tmp_path):
    (tmp_path / "a.yaml").write_text("lr: 0.2\nembedding-dim: 16\nks: [1, 3]\ngrad_clip: null\n")
    (tmp_path / "a.toml").write_text("lr = 0.2\nembedding_dim = 16\nks = [1, 3]\n")
    from_yaml = load_config_file(tmp_path / "a.yaml")
    assert load_config_file(tmp_path / "a.toml") == {k: v for k, v in from_yaml.items()
                                                     if k != "grad_clip"}
    cfg = config_from((str(tmp_path / "a.yaml"), from_yaml), ("cli", {"lr": 0.5, "epochs": None}))
    assert (cfg.lr, cfg.embedding_dim, cfg.ks, cfg.epochs) == (0.5, 16, [1, 3], 10)
    save_config(tmp_path / "saved.yaml", cfg)
    assert config_from(("f", load_config_file(tmp_path / "saved.yaml"))) == cfg
    with pytest.raises(OptionError, match=r"^lr: must be > 0") as e:
        config_from(("cli", {"lr": -1.0}))
    assert flag_message(e.value).startswith("--lr: must be > 0")
    with pytest.raises(OptionError, match=r"a\.yaml: 'best_metric': unknown metric 'rank3'") as e:
        config_from((str(tmp_path / "a.yaml"), {"best_metric": "rank3"}))
    assert flag_message(e.value) == str(e.value)  # a file's key keeps the file's wording


def test_batch_hard_triplet_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(10, 3, generator=g), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4])
    losses = []
    for a in range(10):
        pos = [j for j in range(10) if j != a and labels[j] == labels[a]]
        neg = [j for j in range(10) if labels[j] != labels[a]]
        if pos and neg:
            d = [float((emb[a] - emb[j]).norm()) for j in range(10)]
            losses.append(max(0.0, max(d[j] for j in pos) - min(d[j] for j in neg) + 0.3))
    got = batch_hard_triplet(emb, labels, margin=0.3)
    assert float(got) == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_pk_batches_cover_every_image_in_p_by_k_groups():
    labels = torch.tensor([0] * 5 + [1] * 4 + [2] * 2 + [3] * 3)
    batches = pk_batches(labels, batch_size=4, instances=2, generator=torch.Generator().manual_seed(1))
    seen = {i for b in batches for i in b}
    assert seen == set(range(14))
    for b in batches:
        groups = [b[i:i + 2] for i in range(0, len(b), 2)]
        assert all(labels[g[0]] == labels[g[1]] for g in groups)
    again = pk_batches(labels, batch_size=4, instances=2, generator=torch.Generator().manual_seed(1))
    assert again == batches



@pytest.mark.slow
def test_cli_logs_plain_lines_to_a_log_file_as_it_trains(data, tmp_path, slow_reference):
    """stdout and stderr are files (nohup, a batch job's log): a start line, then one line per
    epoch, each on disk as soon as it happens; stdout keeps only the result."""
    ready, out, err = tmp_path / "ready", tmp_path / "out.log", tmp_path / "err.log"
    args = ["train", str(data / "train"), "--query", str(data / "query"), "--gallery",
            str(data / "gallery"), *TINY_ARGS, "--backbone", SLOW["backbone"], "--batch-size", "4",
            "--out-dir", "run"]
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen(["embeval", *args], cwd=tmp_path, stdout=fo, stderr=fe,
                                env=cli_env({"EMBEVAL_TEST_READY": str(ready)}))
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        during = err.read_text()  # epoch 2 is running (see SlowNet): epoch 1 is logged already
        assert proc.wait(timeout=60) == 0, err.read_text()
    run = tmp_path / "run"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    log = err.read_text().splitlines()
    assert during.splitlines() == log[:2] and len(log) == 3
    assert log[0] == ("train: helpers.models:slow_net on " + str(data / "train") + " (24 images, "
                      "4 classes; evaluated on 8 query x 12 gallery images), 2 epochs of 6 steps "
                      f"on cpu; run folder {Path('run')}")
    for line, r in zip(log[1:], records, strict=True):
        assert line.startswith(
            f"epoch {r['epoch']}/2: loss {r['train_loss']:.4f}, train acc "
            f"{100 * r['train_accuracy']:.2f}%, rank1 {100 * r['rank1']:.2f}%, rank5 "
            f"{100 * r['rank5']:.2f}%, mAP {100 * r['mAP']:.2f}%, mINP {100 * r['mINP']:.2f}%, ")
        assert f"; saved {Path('run') / 'last.safetensors'}" in line
        assert (f"and {Path('run') / 'best.safetensors'} (best mAP so far)" in line) == r["best"]
    assert "epoch 1/2" not in out.read_text() and "mAP" in out.read_text()  # the table


def test_train_config_errors_name_the_parameter():
    """A value from the command line (or Python) is named by its parameter, mapped to its flag."""
    with pytest.raises(OptionError) as e:
        config_from(("cli", {"instances": 4, "batch_size": 6, "triplet_weight": 1.0}))
    assert str(e.value) == ("batch_size: the P x K sampler needs at least 2 classes of "
                            "instances 4 per batch (>= 8)")
    assert flag_message(e.value) == ("--batch-size: the P x K sampler needs at least 2 classes "
                                     "of --instances 4 per batch (>= 8)")
    with pytest.raises(OptionError) as e:
        TrainConfig(ks=[0]).check()
    assert (str(e.value), flag_message(e.value)) == (
        "ks: expected rank cut-offs >= 1, got [0]", "-k: expected rank cut-offs >= 1, got [0]")


def test_a_missing_image_set_names_the_parameter(tmp_path):
    from embeval.train.evaluation import load_train_data

    for cfg, name, flag in ((TrainConfig(), "train", "TRAIN_DIR"),
                            (TrainConfig(train=str(tmp_path)), "query", "--query")):
        with pytest.raises(OptionError, match=f"^{name}: not given") as e:
            load_train_data(cfg)
        assert flag_message(e.value) == (f"{flag}: not given (a folder or CSV of the {name} "
                                         f"images, or '{name}' in the config file)")
