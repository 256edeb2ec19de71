"""``embeval train``: options (command line over config file over defaults) in, per-epoch table out.

SIGINT / SIGTERM ask the engine to stop after the current step: it saves a resumable
state and the command exits with 130 / 143 and one line telling how to resume. A
second signal stops at once (the last saved state still resumes).
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from embeval.errors import InputFileError, OptionError
from embeval.train.config import TrainConfig, config_from, load_config_file  # no torch, no yaml

from ._app import app, interactive, stderr, stdout
from .evaluate_cmds import examples

if TYPE_CHECKING:
    from embeval.train import TrainInterrupted, TrainResult

D = TrainConfig()
#: what may change when a run is resumed; everything else comes from RUN/config.yaml
RESUMABLE = ("epochs", "device", "workers", "eval_batch_size", "tensorboard")


def _opt(metavar: str | None, help_: str, *names: str, **kw: Any) -> Any:
    """An option without a shown default (the help text says it: the config file may change it).

    Name the flag (``names``) when ``metavar`` is the parameter's name in capitals: Typer 0.27
    then takes the metavar for the flag (``--LR``)."""
    return typer.Option(*names, metavar=metavar, help=help_, show_default=False, **kw)


TRAIN_EXAMPLES = examples(
    "embeval train data/train --query data/query --gallery data/gallery --out-dir run --epochs 20",
    "embeval train --config train.yaml --lr 0.1 --out-dir run2",
    "embeval train --resume run --epochs 30   (continue, and train longer)")


@app.command("train", no_args_is_help=True, epilog=TRAIN_EXAMPLES)
def train_cmd(
    train_dir: Annotated[Path | None, typer.Argument(
        metavar="TRAIN_DIR",
        help="Training image set (a class-folder tree, a flat folder with --label-regex / "
             "--layout market1501, or a CSV path,label).", show_default=False)] = None,
    query: Annotated[Path | None, _opt("DIR", "Query image set, evaluated after every epoch.")] = None,
    gallery: Annotated[Path | None, _opt("DIR", "Gallery image set.")] = None,
    out_dir: Annotated[Path | None, _opt(
        "RUN", "Run folder: checkpoints, metrics.jsonl, state.pt, config.yaml.")] = None,
    config: Annotated[Path | None, _opt(
        "FILE", "YAML / TOML file of options (any key below, e.g. 'lr: 0.1'); options given here "
                "win.")] = None,
    resume: Annotated[Path | None, _opt(
        "RUN", "Continue the run in this folder from its last saved step (its config.yaml; only "
        f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may change).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start over in an --out-dir that holds a run.")] = False,
    layout: Annotated[str | None, _opt(
        "LAYOUT", f"Image set layout (default {D.layout}).", "--layout")] = None,
    label_regex: Annotated[str | None, _opt(
        "REGEX", "Regex with named groups 'label' [, 'camera'].")] = None,
    backbone: Annotated[str | None, _opt(
        "NAME", f"Built-in backbone or package.module:callable (default {D.backbone}).")] = None,
    backbone_head: Annotated[str | None, _opt(
        "HEAD", "module:callable backbones: 'identity' drops its classifier (fc/head), 'keep' "
                "keeps it.")] = None,
    widths: Annotated[str | None, _opt(
        "W,W,...", "Built-in backbone stage widths, comma-separated "
                   f"(default {','.join(map(str, D.widths))}).")] = None,
    embedding_dim: Annotated[int | None, _opt(
        "D", f"Embedding size D (default {D.embedding_dim}).")] = None,
    classifier: Annotated[str | None, _opt("NAME", "softmax or cosine (normalised softmax).")] = None,
    scale: Annotated[float | None, _opt("S", f"Cosine classifier scale (default {D.scale}).")] = None,
    margin: Annotated[float | None, _opt("M", "Cosine classifier additive margin (default 0).")] = None,
    label_smoothing: Annotated[float | None, _opt(
        "EPS", f"Cross-entropy label smoothing (default {D.label_smoothing}).")] = None,
    triplet_weight: Annotated[float | None, _opt(
        "W", "Weight of the batch-hard triplet loss (default 0: off; > 0 uses the P x K "
             "sampler).")] = None,
    triplet_margin: Annotated[float | None, _opt(
        "M", f"Triplet margin (default {D.triplet_margin}).")] = None,
    sampler: Annotated[str | None, _opt(
        "NAME", "auto, random or pk (P classes x K images per batch).")] = None,
    instances: Annotated[int | None, _opt("K", f"K of the P x K sampler (default {D.instances}).")] = None,
    size: Annotated[tuple[int, int] | None, _opt(
        "H W", f"Resize images to H W (default {D.size[0]} {D.size[1]}).")] = None,
    crop: Annotated[tuple[int, int] | None, _opt("H W", "Center crop H W after the resize.")] = None,
    mean: Annotated[tuple[float, float, float] | None, _opt(
        "R G B", "Normalisation mean (default ImageNet).")] = None,
    std: Annotated[tuple[float, float, float] | None, _opt(
        "R G B", "Normalisation std (default ImageNet).")] = None,
    hflip: Annotated[bool | None, _opt(None, "Random horizontal flips (augmentation).",
                                       "--hflip/--no-hflip")] = None,
    epochs: Annotated[int | None, _opt("N", f"Epochs (default {D.epochs}).")] = None,
    batch_size: Annotated[int | None, _opt("N", f"Images per step (default {D.batch_size}).")] = None,
    optimizer: Annotated[str | None, _opt("NAME", "sgd (Nesterov momentum) or adamw.")] = None,
    lr: Annotated[float | None, _opt("LR", f"Peak learning rate (default {D.lr}).", "--lr")] = None,
    momentum: Annotated[float | None, _opt("M", f"SGD momentum (default {D.momentum}).")] = None,
    weight_decay: Annotated[float | None, _opt(
        "WD", f"Weight decay of weights (not BN/biases) (default {D.weight_decay}).")] = None,
    schedule: Annotated[str | None, _opt("NAME", "LR schedule: cosine, step or constant.")] = None,
    step_size: Annotated[int | None, _opt("N", "step schedule: epochs between LR drops.")] = None,
    gamma: Annotated[float | None, _opt("G", f"step schedule: LR factor (default {D.gamma}).")] = None,
    warmup_epochs: Annotated[float | None, _opt(
        "N", "Linear LR warm-up, in epochs (default 0).")] = None,
    grad_clip: Annotated[float | None, _opt("NORM", "Clip the gradient norm to this value.")] = None,
    precision: Annotated[str | None, _opt(
        "PRECISION", "fp32, or bf16 / fp16 autocast (CUDA only).", "--precision")] = None,
    seed: Annotated[int | None, _opt(
        "N", f"Random seed (default {D.seed}): same seed, same run.")] = None,
    device: Annotated[str | None, _opt("DEVICE", "auto, cpu, cuda or cuda:N.", "--device")] = None,
    workers: Annotated[int | None, _opt(
        "N", "Image decoding processes (default min(4, CPUs)).")] = None,
    metric: Annotated[str | None, _opt(
        "METRIC", "Evaluation similarity (default cosine).", "--metric")] = None,
    ks: Annotated[list[int] | None, _opt("K...", "Rank cut-offs (default 1 5 10).", "-k")] = None,
    exclude_same_camera: Annotated[bool | None, _opt(
        None, "Evaluation: drop gallery items with the query's label AND camera.",
        "--exclude-same-camera")] = None,
    aggregate: Annotated[str | None, _opt(
        "HOW", "Evaluation: none or mean (class prototypes).")] = None,
    no_positive: Annotated[str | None, _opt("HOW", "Queries without positives: skip or zero.")] = None,
    best_metric: Annotated[str | None, _opt(
        "METRIC", "Metric that picks best.safetensors (default mAP; rank1, mINP, ...).")] = None,
    eval_batch_size: Annotated[int | None, _opt("N", "Images per forward when evaluating.")] = None,
    tensorboard: Annotated[bool | None, _opt(  # "\\[": a bracket, not Rich markup
        None, "Log scalars and a projector of gallery embeddings to RUN/tensorboard "
        "(pip install 'embeval\\[tensorboard]').", "--tensorboard")] = None,
    projector_samples: Annotated[int | None, _opt(
        "N", f"--tensorboard: gallery embeddings in each epoch's projector view (default "
        f"{D.projector_samples}).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train an embedding network, evaluating it like [bold]cmc[/] after every epoch:
    [bold]train TRAIN_DIR --query DIR --gallery DIR --out-dir RUN[/]."""
    cli = dict(train=train_dir, query=query, gallery=gallery, out_dir=out_dir, layout=layout,
               label_regex=label_regex, backbone=backbone, backbone_head=backbone_head,
               widths=_ints(widths, "--widths"), embedding_dim=embedding_dim, classifier=classifier,
               scale=scale, margin=margin, label_smoothing=label_smoothing,
               triplet_weight=triplet_weight, triplet_margin=triplet_margin, sampler=sampler,
               instances=instances, size=size, crop=crop, mean=mean, std=std, hflip=hflip,
               epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
               weight_decay=weight_decay, schedule=schedule, step_size=step_size, gamma=gamma,
               warmup_epochs=warmup_epochs, grad_clip=grad_clip, precision=precision, seed=seed,
               device=device, workers=workers, metric=metric, ks=ks or None,
               exclude_same_camera=exclude_same_camera, aggregate=aggregate, no_positive=no_positive,
               best_metric=best_metric, eval_batch_size=eval_batch_size, tensorboard=tensorboard,
               projector_samples=projector_samples)
    cli = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)  # type: ignore[arg-type]
           for k, v in cli.items()}
    if resume is not None:
        given = [k for k, v in cli.items() if v is not None and k not in RESUMABLE]
        if given or config is not None or overwrite:
            name = "--config" if config is not None else "--overwrite" if overwrite else (
                "TRAIN_DIR" if given[0] == "train" else "--" + given[0].replace("_", "-"))
            raise OptionError(f"--resume {resume}: {name} cannot change a run; it continues with "
                              f"its config.yaml (only {', '.join(RESUMABLE)} may change)")
        saved = resume / "config.yaml"
        if not saved.exists():
            from embeval.train.state import load_state

            load_state(resume)  # no run here: it says why
            raise InputFileError(saved, "--resume: the run has no config.yaml")
        layers = [(str(saved), load_config_file(saved)), ("cli", {**cli, "out_dir": str(resume)})]
    else:
        layers = [(str(config), load_config_file(config))] if config is not None else []
        layers.append(("cli", cli))
    cfg = config_from(*layers)
    result, interrupted = _run(cfg, resume=resume is not None, overwrite=overwrite)
    if interrupted is not None:
        stderr.print(f"embeval: {interrupted}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(143 if interrupted.reason == "SIGTERM" else 130)
    assert result is not None
    if json_out:
        print(json.dumps({"command": "train", "run": str(result.run_dir), "best": result.best,
                          "checkpoint": str(result.run_dir / "best.safetensors"),
                          "epochs": result.history}))
        return
    stdout.print(_table(result, cfg))


def _ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise OptionError(f"{option}: expected comma-separated integers, got {text!r}") from None


def _run(cfg: TrainConfig, *, resume: bool, overwrite: bool,
         ) -> tuple[TrainResult | None, TrainInterrupted | None]:
    from embeval.train import TrainInterrupted, train  # torch loads here

    with _stop_on_signals() as should_stop, _bar() as progress:
        try:
            return train(cfg, resume=resume, overwrite=overwrite, progress=progress,
                         should_stop=should_stop), None
        except TrainInterrupted as e:
            return None, e


@contextmanager
def _stop_on_signals() -> Iterator[Callable[[], str | None]]:
    """SIGINT / SIGTERM set a flag the engine polls; a second one stops at once."""
    reason: list[str] = []

    def handler(signum: int, frame: object) -> None:
        if reason:
            raise KeyboardInterrupt
        reason.append(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: reason[0] if reason else None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _bar() -> Iterator[Callable[[dict[str, Any]], None]]:
    """A Rich bar of the epoch's steps on stderr, one line per finished epoch; where stderr is
    not a terminal (nohup, a batch job's log, ``| tee``), plain log lines instead (:func:`_log`)."""
    if not interactive():
        yield _log()
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task("training", total=None, info="")

        def update(ev: dict[str, Any]) -> None:
            kind = ev["event"]
            if kind == "epoch_start":
                bar.update(task, description=f"epoch {ev['epoch']}/{ev['epochs']}", completed=0,
                           total=ev["steps"], info="")
            elif kind == "step":
                bar.update(task, completed=ev["step"], info=f"loss {ev['loss']:.4f}")
            elif kind == "eval":
                bar.update(task, info="evaluating")
            elif kind == "epoch":
                r = ev["record"]
                bar.console.print(f"epoch {r['epoch']}: loss {r['train_loss']:.4f}, "
                                  f"rank1 {_pct(r.get('rank1'))}, mAP {_pct(r.get('mAP'))}"
                                  + (" (best)" if r["best"] else ""), highlight=False)

        yield update


def _log() -> Callable[[dict[str, Any]], None]:
    """Progress events -> plain stderr lines, flushed one by one: the run at the start, then
    each finished epoch (loss, training accuracy, the evaluation, seconds, checkpoints)."""
    run: dict[str, Any] = {}

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def update(ev: dict[str, Any]) -> None:
        if ev["event"] == "start":
            run.update(ev)
            what = (f"{ev['backbone']} on {ev['train']} ({ev['images']} images, {ev['classes']} "
                    f"classes; evaluated on {ev['query']} query x {ev['gallery']} gallery images)")
            if ev["epoch"] >= ev["epochs"]:
                say(f"train: {ev['run']} has finished its {ev['epochs']} epochs; nothing to train")
            elif ev["resumed"]:
                say(f"train: resuming {ev['run']} at epoch {ev['epoch'] + 1}/{ev['epochs']}, step "
                    f"{ev['step']}/{ev['steps']}: {what}, on {ev['device']}")
            else:
                say(f"train: {what}, {ev['epochs']} epochs of {ev['steps']} steps on {ev['device']}; "
                    f"run folder {ev['run']}")
        elif ev["event"] == "epoch":
            r = ev["record"]
            folder = Path(run.get("run", "."))
            evals = [f"{k} {_pct(r.get(k))}%" for k in r if k.startswith("rank")]
            saved = f"saved {folder / 'last.safetensors'}" + (
                f" and {folder / 'best.safetensors'} (best {run.get('best_metric')} so far)"
                if r["best"] else "")
            say(f"epoch {r['epoch']}/{run.get('epochs', '?')}: loss {r['train_loss']:.4f}, "
                f"train acc {_pct(r['train_accuracy'])}%, " + ", ".join(
                    [*evals, f"mAP {_pct(r.get('mAP'))}%", f"mINP {_pct(r.get('mINP'))}%"])
                + f", {r['seconds']:.1f}s; {saved}")

    return update


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _table(result: TrainResult, cfg: TrainConfig) -> Table:
    ranks = [f"rank{k}" for k in cfg.ks]
    table = Table(title=f"train: {result.run_dir} (best {cfg.best_metric} "
                        f"{_pct(result.best.get('value'))} at epoch {result.best.get('epoch')} *; "
                        "acc = training accuracy; metrics in %)", title_justify="left",
                  show_edge=False)
    for col in ("epoch", "lr", "loss", "acc", *ranks, "mAP", "mINP"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in result.history:
        table.add_row(f"{r['epoch']}{'*' if r['best'] else ''}", f"{r['lr']:.3g}",
                      f"{r['train_loss']:.4f}", _pct(r["train_accuracy"]),
                      *(_pct(r.get(k)) for k in ranks), _pct(r.get("mAP")), _pct(r.get("mINP")))
    return table
