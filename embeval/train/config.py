"""The training configuration: every option of ``embeval train``, from defaults, a file, the CLI.

Precedence: defaults < ``--config FILE`` (YAML ``.yaml``/``.yml`` or TOML ``.toml``, a flat
mapping of the keys below; ``-`` and ``_`` are interchangeable) < command-line options.
The effective configuration is saved as ``RUN/config.yaml`` and is what ``--resume``
reads back. Unknown keys and bad values raise :class:`OptionError` naming the file (or the
``--option``) and the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embeval._vocab import IMAGENET_MEAN, IMAGENET_STD, LAYOUTS
from embeval.errors import InputFileError, OptionError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: YAML only
    tomllib = None  # type: ignore[assignment, unused-ignore]

__all__ = ["TrainConfig", "load_config_file", "config_from", "save_config", "CHOICES"]

CHOICES: dict[str, tuple[str, ...]] = {
    "layout": LAYOUTS,
    "backbone_head": ("identity", "keep"),
    "classifier": ("softmax", "cosine"),
    "sampler": ("auto", "random", "pk"),
    "optimizer": ("sgd", "adamw"),
    "schedule": ("cosine", "step", "constant"),
    "precision": ("fp32", "bf16", "fp16"),
    "metric": ("inner", "cosine", "euclid", "sq_euclid"),
    "aggregate": ("none", "mean"),
    "no_positive": ("skip", "zero"),
}


@dataclass
class TrainConfig:
    """Every training option (see README "Train" for what each one does)."""

    # data: image sets in any layout that `extract` reads
    train: str | None = None
    query: str | None = None
    gallery: str | None = None
    out_dir: str | None = None
    layout: str = "auto"
    label_regex: str | None = None
    # model: backbone + embedding neck (linear + BN) + classifier over the training classes
    backbone: str = "embeval-small"
    backbone_head: str = "identity"
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    embedding_dim: int = 128
    classifier: str = "softmax"
    scale: float = 16.0
    margin: float = 0.0
    label_smoothing: float = 0.1
    triplet_weight: float = 0.0
    triplet_margin: float = 0.3
    sampler: str = "auto"
    instances: int = 4
    # input
    size: list[int] = field(default_factory=lambda: [64, 64])
    crop: list[int] | None = None
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    hflip: bool = False
    # optimisation
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    precision: str = "fp32"
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    # evaluation after every epoch (the options of `cmc`)
    metric: str = "cosine"
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    exclude_same_camera: bool = False
    aggregate: str = "none"
    no_positive: str = "skip"
    best_metric: str = "mAP"
    eval_batch_size: int = 128
    # logging
    tensorboard: bool = False
    projector_samples: int = 500

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def use_pk(self) -> bool:
        return self.sampler == "pk" or (self.sampler == "auto" and self.triplet_weight > 0)

    def check(self, origin: Mapping[str, str] | None = None) -> TrainConfig:
        """Validate every value; the error names where the bad value came from."""
        origin = origin or {}

        def bad(key: str, problem: str, also: tuple[str, ...] = ()) -> OptionError:
            """``key: problem`` (a value from a file: ``FILE: 'key': problem``), naming the
            parameters ``key`` (not for a file's key) and ``also``."""
            where = origin.get(key)
            if where in (None, "cli"):
                return OptionError(f"{key}: {problem}", param=(key, *also))
            return OptionError(f"{where}: {key!r}: {problem}", param=also)

        for key, choices in CHOICES.items():
            if getattr(self, key) not in choices:
                raise bad(key, f"unknown value {getattr(self, key)!r} (choose from {', '.join(choices)})")
        positive = ("embedding_dim", "instances", "epochs", "batch_size", "step_size",
                    "eval_batch_size", "scale", "lr")
        for key in positive:
            if not getattr(self, key) > 0:
                raise bad(key, f"must be > 0, got {getattr(self, key)}")
        for key in ("epochs", "momentum", "weight_decay", "warmup_epochs", "margin",
                    "triplet_weight", "triplet_margin", "projector_samples"):
            v = getattr(self, key)
            if not (v >= 0 and math.isfinite(v)):
                raise bad(key, f"must be >= 0, got {v}")
        if not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if not 0 < self.gamma <= 1:
            raise bad("gamma", f"must be in (0, 1], got {self.gamma}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", f"must be > 0, got {self.grad_clip}")
        if self.workers is not None and self.workers < 0:
            raise bad("workers", f"must be >= 0, got {self.workers}")
        if not self.widths or min(self.widths) < 1:
            raise bad("widths", f"expected positive channel counts, got {self.widths}")
        for key, n in (("size", 2), ("crop", 2), ("mean", 3), ("std", 3)):
            v = getattr(self, key)
            if v is not None and len(v) != n:
                raise bad(key, f"expected {n} numbers, got {v}")
        if not self.ks or min(self.ks) < 1:
            raise bad("ks", f"expected rank cut-offs >= 1, got {self.ks}")
        if self.use_pk and self.batch_size < 2 * self.instances:
            raise bad("batch_size", f"the P x K sampler needs at least 2 classes of instances "
                                    f"{self.instances} per batch (>= {2 * self.instances})",
                      also=("instances",))
        known = {"mAP", "mINP", "accuracy", *(f"rank{k}" for k in self.ks),
                 *(f"top{k}_accuracy" for k in self.ks)}
        if self.best_metric not in known:
            raise bad("best_metric", f"unknown metric {self.best_metric!r} (choose from "
                                     f"{', '.join(sorted(known))})")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(key: str, value: Any, where: str) -> Any:
    """A value from a file -> the field's type (raises OptionError naming ``where``)."""
    kind = str(_FIELDS[key].type)
    if value is None:
        if "None" in kind:
            return None
        raise OptionError(f"{where}: {key!r}: must not be empty")
    base = kind.replace(" | None", "")
    scalar = {"int": int, "float": float, "str": str, "bool": bool}

    def one(v: Any, t: str) -> Any:
        ok = {"int": isinstance(v, int) and not isinstance(v, bool),
              "float": isinstance(v, (int, float)) and not isinstance(v, bool),
              "str": isinstance(v, (str, int, float)) and not isinstance(v, bool),
              "bool": isinstance(v, bool)}[t]
        if not ok:
            raise OptionError(f"{where}: {key!r}: expected {'a' if t != 'int' else 'an'} {t}, "
                              f"got {v!r}")
        return scalar[t](v)

    if base.startswith("list["):
        inner = base[5:-1]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise OptionError(f"{where}: {key!r}: expected a list of {inner}s, got {value!r}")
        return [one(v, inner) for v in value]
    return one(value, base)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML / TOML file -> {field: value} (keys checked and values coerced)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "config: no such file" if not p.exists() else "config: not a file",
                             param="config")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputFileError(p, f"config: cannot read ({e})", param="config") from None
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise InputFileError(p, "config: expected a .yaml, .yml or .toml file", param="config")
    if suffix == ".toml" and tomllib is None:
        raise InputFileError(p, "config: TOML needs Python >= 3.11; use YAML", param="config")
    import yaml  # here, not at the top: `embeval --help` does not load it

    try:
        data = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:  # tomllib.TOMLDecodeError is a ValueError
        first = " ".join(str(e).split())[:160]
        raise InputFileError(p, f"not valid {suffix.lstrip('.').upper()} ({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputFileError(p, f"expected a mapping of option: value, got a {type(data).__name__}")
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in _FIELDS:
            near = [k for k in _FIELDS if k.startswith(key[:3])]
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise OptionError(f"{p}: unknown key {raw_key!r}{hint}")
        out[key] = _coerce(key, value, str(p))
    return out


def config_from(*layers: tuple[str, Mapping[str, Any]]) -> TrainConfig:
    """Defaults overridden by each (origin, values) layer in turn, then checked.

    ``origin`` is a file name or ``"cli"``; None values in the ``"cli"`` layer are "not given".
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, layer in layers:
        for key, value in layer.items():
            if key not in _FIELDS:
                raise OptionError(f"{where}: unknown option {key!r}")
            if where == "cli" and value is None:
                continue
            values[key] = value
            origin[key] = where
    return TrainConfig(**values).check(origin)


def save_config(path: Path, config: TrainConfig) -> None:
    """Write the effective configuration as YAML (atomically), with absolute paths."""
    import yaml

    from embeval.outputs import atomic_path

    values = config.to_dict()
    for key in ("train", "query", "gallery", "out_dir"):
        if values[key] is not None:
            values[key] = str(Path(values[key]).absolute())
    with atomic_path(path, member=True) as tmp:  # a name in the run folder
        tmp.write_text("# embeval train: the effective configuration of this run\n"
                       + yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
