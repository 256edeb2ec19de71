"""A training run's folder: resumable state, RNG states, metrics.jsonl, run detection.

``RUN/`` holds ``config.yaml`` (effective configuration), ``metrics.jsonl`` (one JSON
object per finished epoch), ``last.safetensors`` / ``best.safetensors`` (embedding
network checkpoints, see :mod:`embeval.extract.checkpoint`), ``state.pt`` (everything needed to
resume, loaded weights-only by :func:`embeval.safe_load.load_tensors`) and ``tensorboard/``
when asked.
Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embeval.errors import InputFileError, OptionError
from embeval.outputs import append_text, atomic_path, check_members
from embeval.safe_load import load_tensors

__all__ = ["RUN_FILES", "STATE_VERSION", "check_new_run", "check_run_files", "save_state", "load_state",
           "rng_states", "restore_rng_states", "append_metrics", "truncate_metrics"]

STATE_VERSION = 1
RUN_FILES = ("state.pt", "metrics.jsonl", "config.yaml", "last.safetensors", "best.safetensors")


def check_new_run(out_dir: Path, *, overwrite: bool) -> None:
    """Create ``out_dir``; refuse one that holds a run unless ``overwrite`` (then clear it)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputFileError(out_dir, "out_dir: exists and is not a folder", param="out_dir")
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if found and not overwrite:
        raise OptionError(f"out_dir {out_dir}: already holds a run ({found[0]}); use "
                          f"resume {out_dir} to continue it or overwrite to start over",
                          param=("out_dir", "resume", "overwrite"))
    for name in found:
        (out_dir / name).unlink()
    if overwrite:
        shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputFileError(out_dir, f"out_dir: cannot create ({e.strerror or e})",
                             param="out_dir") from None
    if not os.access(out_dir, os.W_OK):
        raise InputFileError(out_dir, "out_dir: folder is not writable", param="out_dir")


def check_run_files(run_dir: Path, *, option: str) -> None:
    """Refuse, before any work, a run file name (:data:`RUN_FILES`) that is not a regular file
    or nothing: a link, a FIFO, a device or a folder (:func:`embeval.outputs.check_members`)."""
    if run_dir.is_dir():
        check_members(run_dir, RUN_FILES, option=option)


def rng_states(**generators: torch.Generator) -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states plus the named generators."""
    np_state: Any = np.random.get_state()  # the legacy tuple
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any], **generators: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, g in generators.items():
        g.set_state(states["generators"][name])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``state.pt`` (a name in the run folder: a regular file or nothing)."""
    with atomic_path(path, member=True) as tmp:
        torch.save({"version": STATE_VERSION, **state}, str(tmp))


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "state.pt"
    if not run_dir.is_dir():
        raise InputFileError(run_dir, "resume: no such run folder", param="resume")
    if not path.is_file():
        raise InputFileError(path, "resume: no state file (not a run folder, or the run never "
                                   "finished a step)", param="resume")
    try:
        state = load_tensors(path)
    except InputFileError as e:
        raise InputFileError(path, f"resume: cannot read the state file ({e.problem})",
                             param="resume") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise InputFileError(path, "resume: not an embeval training state (version "
                                   f"{state.get('version') if isinstance(state, dict) else '?'})",
                             param="resume")
    return state


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (a single write, flushed to disk)."""
    append_text(path, json.dumps(record, allow_nan=False) + "\n")


def truncate_metrics(path: Path, epochs_done: int) -> list[dict[str, Any]]:
    """Keep the records of epochs 1..epochs_done (a resumed run redoes the rest); return them."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a hard kill
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int) and rec["epoch"] <= epochs_done:
            kept.append(rec)
    with atomic_path(path, member=True) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    return kept
