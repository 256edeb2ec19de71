"""The embedding file: safetensors with ``embeddings`` [N, D], ``labels`` [N], ``cameras`` [N].

Layout (DESIGN.md section 2):

============  ==========================  =======  ========
tensor        dtype                       shape    required
============  ==========================  =======  ========
embeddings    float32 / float16 / bfloat16 [N, D]  yes
labels        int64                       [N]      yes
cameras       int64                       [N]      no
paths_utf8    uint8                       [B]      no
paths_offsets int64                       [N + 1]  no
============  ==========================  =======  ========

Per-item paths live in the file as one UTF-8 byte tensor plus offsets (item i is
``paths_utf8[offsets[i]:offsets[i + 1]]``), never in the JSON header, so a
million-item file keeps a small header. Metadata holds ``embeval.format = "1"``
and, where known, ``model``, ``normalized``, ``source`` and ``label_names``.

Inputs people have are accepted where nothing is lost: labels and cameras of any integer
dtype become int64; float64 embeddings (numpy's default) become float32, in memory and when
read from a file (:func:`save` records ``converted_from = "float64"``), and a value beyond
float32's range is refused naming its row. Float labels and shapes other than [N] are refused.

``.npz`` files (arrays ``embeddings``, ``labels``, optional ``cameras``, ``paths``) are read too,
whole and without unpickling (:mod:`embeval.data.numpy_io`): :func:`load` is the one way in.

Reads are lazy: labels are loaded, embedding rows are sliced from the file on
demand (``safe_open(...).get_slice``), so galleries larger than RAM stream.
Writes go through :func:`embeval.outputs.atomic_path` (complete under the final name, or absent).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from embeval.data.safetensors_io import write_safetensors
from embeval.errors import InputFileError
from embeval.outputs import atomic_path

__all__ = ["EmbeddingSet", "load", "save", "read_ids", "read_weights", "FORMAT_VERSION"]

FORMAT_VERSION = "1"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
READ_DTYPES = (*FLOAT_DTYPES, torch.float64)  # float64 rows are read as float32
_F32_MAX = float(torch.finfo(torch.float32).max)


class EmbeddingSet:
    """Embeddings with labels (and optional cameras), in memory or read lazily from a file.

    ``labels``: [N] int64, a label < 0 means "unknown" (never a positive).
    ``cameras``: [N] int64 or None. Rows come back as float32 through :meth:`rows`.
    """

    def __init__(
        self,
        embeddings: torch.Tensor | None,
        labels: torch.Tensor | Sequence[int],
        cameras: torch.Tensor | Sequence[int] | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        paths: Sequence[str] | None = None,
        name: str = "<tensor>",
        _file: Path | None = None,
        _shape: tuple[int, int] | None = None,
        _dtype: torch.dtype | None = None,
    ) -> None:
        self.name = name
        self.metadata = dict(metadata or {})
        self._file = _file
        self._paths = list(paths) if paths is not None else None
        self.labels = _as_ids(name, "labels", labels)
        self.cameras = None if cameras is None else _as_ids(name, "cameras", cameras)
        if embeddings is not None:
            if not isinstance(embeddings, torch.Tensor):
                embeddings = torch.as_tensor(embeddings)  # numpy arrays, nested lists
            if embeddings.dtype == torch.float64 and embeddings.dim() == 2:
                embeddings = _to_float32(name, embeddings)
            self._emb: torch.Tensor | None = embeddings
            shape = tuple(embeddings.shape)
            _dtype = embeddings.dtype
        else:
            self._emb = None
            shape = _shape  # type: ignore[assignment]
        self.dtype: torch.dtype | None = _dtype  # stored dtype of the embeddings
        _validate(name, shape, embeddings.dtype if embeddings is not None else None,
                  self.labels, self.cameras, self._paths)
        self.n, self.dim = int(shape[0]), int(shape[1])
        if embeddings is not None:
            _check_finite(name, embeddings, 0)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        where = "lazy" if self._emb is None else "in memory"
        return f"EmbeddingSet({self.name!r}, n={self.n}, dim={self.dim}, {where})"

    @property
    def is_lazy(self) -> bool:
        return self._emb is None

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as a float32 [n, D] tensor (checked finite when read lazily)."""
        if self._emb is not None:
            return self._emb[start:stop].float()
        with _open(self._file) as f:  # type: ignore[arg-type]
            raw = f.get_slice("embeddings")[start:stop]
        block = raw.float()
        _check_finite(self.name, block, start, raw if raw.dtype == torch.float64 else None)
        return block

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Rows at ``index`` ([M] int64, any order) as float32 [M, D]."""
        if self._emb is not None:
            return self._emb[index].float()
        out = torch.empty(len(index), self.dim)
        order = torch.argsort(index)
        sorted_idx = index[order]
        step = max(1, (64 << 20) // max(1, 4 * self.dim))  # read at most 64 MB at once
        for a in range(0, self.n, step):
            lo, hi = torch.searchsorted(sorted_idx, torch.tensor([a, a + step]))
            if hi > lo:
                block = self.rows(a, min(a + step, self.n))
                out[order[lo:hi]] = block[sorted_idx[lo:hi] - a]
        return out

    @property
    def embeddings(self) -> torch.Tensor:
        """All rows as float32 [N, D] (loads a lazy file into memory)."""
        return self.rows(0, self.n)

    def in_memory(self) -> EmbeddingSet:
        """This set with its embeddings loaded (itself when already in memory)."""
        if self._emb is not None:
            return self
        return EmbeddingSet(self.embeddings, self.labels, self.cameras, metadata=self.metadata,
                            paths=self._paths, name=self.name)

    @property
    def paths(self) -> list[str] | None:
        """Per-item source paths, when the file records them."""
        if self._paths is None and self._file is not None:
            with _open(self._file) as f:
                if "paths_utf8" in f.keys():
                    raw = bytes(f.get_tensor("paths_utf8").numpy())
                    off = f.get_tensor("paths_offsets").tolist()
                    self._paths = [raw[a:b].decode("utf-8") for a, b in zip(off[:-1], off[1:])]
        return self._paths

    @property
    def label_names(self) -> list[str] | None:
        """``label_names[k]`` names label k (metadata ``label_names``: a JSON list of strings)."""
        return parse_label_names(self.name, self.metadata)


def load(path: str | os.PathLike[str], *, lazy: bool = True) -> EmbeddingSet:
    """Open an embedding file, validating it (section 6 of the design).

    With ``lazy=True`` only labels/cameras are read now; rows are sliced on demand.
    Raises :class:`InputFileError` naming the file and the problem.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "no such file")
    if p.is_dir():
        raise InputFileError(p, "is a folder, expected a .safetensors embedding file")
    if not p.is_file():  # checked before opening: opening a FIFO for reading blocks
        raise InputFileError(p, "is not a regular file (a FIFO, device or socket?), expected a "
                                ".safetensors embedding file")
    if (kind := _numpy_kind(p)) is not None:
        return _load_numpy(p, kind)
    try:
        with _open(p) as f:
            keys = set(f.keys())
            meta = f.metadata() or {}
            for required in ("embeddings", "labels"):
                if required not in keys:
                    raise InputFileError(
                        p, f"missing tensor {required!r} (found: {', '.join(sorted(keys)) or 'none'})"
                    )
            emb = f.get_slice("embeddings")
            shape = tuple(emb.get_shape())
            dtype = _DTYPES.get(emb.get_dtype())
            labels = f.get_tensor("labels")
            cameras = f.get_tensor("cameras") if "cameras" in keys else None
            embeddings = None if lazy else f.get_tensor("embeddings")
    except SafetensorError as e:
        raise InputFileError(p, f"not a readable safetensors file ({e})") from None
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None
    if len(shape) != 2:
        raise InputFileError(p, f"'embeddings' must be 2-D [N, D], got shape {list(shape)}")
    if dtype not in READ_DTYPES:
        raise InputFileError(p, "'embeddings' must be float32, float16 or bfloat16 (or float64, "
                                f"read as float32), got {emb.get_dtype()}")
    parse_label_names(p, meta)
    try:
        return EmbeddingSet(embeddings, labels, cameras, metadata=meta, name=str(p),
                            _file=p if lazy else None, _shape=shape,
                            _dtype=dtype)
    except InputFileError:
        raise
    except ValueError as e:
        raise InputFileError(p, str(e)) from None


def read_ids(path: str | os.PathLike[str], key: str, n: int) -> torch.Tensor | None:
    """One optional per-item id tensor ``key`` of an embedding file (``templates``, ``media``):
    [n] int64, or None when the file has no tensor of that name.

    Read with ``safe_open`` like the rest of the file (no unpickling); integers of any dtype
    become int64 as labels do; a float dtype or a shape other than [n] raises
    :class:`InputFileError` naming the file.
    """
    p = Path(path)
    raw = _optional_tensor(p, key)
    if raw is None:
        return None
    ids = _as_ids(str(p), key, raw)
    _check_ids(str(p), key, ids, n)
    return ids


def _optional_tensor(p: Path, key: str) -> Any:
    """Tensor (safetensors) or array (.npz) ``key`` of an embedding file, or None when absent."""
    if _numpy_kind(p) == "npz":
        from embeval.data.numpy_io import read_npz_ids

        return read_npz_ids(p, key)
    try:
        with _open(p) as f:
            return f.get_tensor(key) if key in f.keys() else None
    except SafetensorError as e:
        raise InputFileError(p, f"not a readable safetensors file ({e})") from None
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None


def read_weights(path: str | os.PathLike[str], key: str, n: int) -> torch.Tensor | None:
    """One optional per-item weight tensor ``key`` of an embedding file (``faceness``): [n]
    float64 (from any float dtype), finite and ≥ 0, or None when the file has no tensor of that
    name. Raises :class:`InputFileError` naming the file otherwise."""
    p = Path(path)
    raw = _optional_tensor(p, key)
    if raw is None:
        return None
    if not isinstance(raw, torch.Tensor):  # a numpy array from an .npz
        raw = torch.as_tensor(raw) if raw.dtype.kind in "biuf" else None
    if raw is None or not raw.is_floating_point():
        raise InputFileError(p, f"{key!r} must be floats (one weight per item)")
    if raw.dim() != 1 or raw.numel() != n:
        raise InputFileError(p, f"{key!r} must be 1-D [{n}] (one weight per embedding row), got "
                                f"shape {list(raw.shape)}")
    w = raw.double()
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise InputFileError(p, f"{key!r} entry {i} is {float(w[i])!r}: weights must be finite "
                                "and >= 0")
    return w


def save(
    path: str | os.PathLike[str],
    embeddings: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    cameras: torch.Tensor | Sequence[int] | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
    paths: Sequence[str] | None = None,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Validate and write an embedding file atomically; returns the path.

    Tensors or numpy arrays. float64 embeddings are stored as float32 (metadata
    ``converted_from = "float64"``); integer labels / cameras of any dtype as int64.
    ``extra``: more [N] tensors (``templates``, ``media``: int64; ``faceness``: float32).
    """
    p = Path(path)
    if not isinstance(embeddings, torch.Tensor):
        embeddings = torch.as_tensor(embeddings)
    s = EmbeddingSet(embeddings, labels, cameras, metadata=metadata, paths=paths, name=str(p))
    tensors = {"embeddings": s._emb.contiguous(), "labels": s.labels.contiguous()}  # type: ignore[union-attr]
    if s.cameras is not None:
        tensors["cameras"] = s.cameras.contiguous()
    for key, value in (extra or {}).items():
        if key in tensors or key.startswith("paths_") or value.shape != (s.n,):
            raise ValueError(f"extra tensor {key!r}: a new name and shape [{s.n}] expected")
        tensors[key] = value.contiguous()
    if paths is not None:
        encoded = [x.encode("utf-8") for x in paths]
        lengths = torch.tensor([0] + [len(b) for b in encoded], dtype=torch.int64)
        tensors["paths_offsets"] = torch.cumsum(lengths, 0)
        tensors["paths_utf8"] = torch.frombuffer(bytearray(b"".join(encoded)) or bytearray(1),
                                                 dtype=torch.uint8)[: int(lengths.sum())].clone()
    meta = {"embeval.format": FORMAT_VERSION, **{k: str(v) for k, v in s.metadata.items()}}
    if embeddings.dtype == torch.float64:
        meta.setdefault("converted_from", "float64")
    parse_label_names(p, meta)
    with atomic_path(p) as tmp, open(tmp, "wb") as f:
        write_safetensors(f, tensors, meta)
    return p


_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32,
}


def parse_label_names(name: object, metadata: Mapping[str, str]) -> list[str] | None:
    """The ``label_names`` metadata as a list of strings (None when absent).

    Raises :class:`InputFileError` naming ``name`` when it is not a JSON list of strings.
    """
    raw = metadata.get("label_names")
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        names = raw
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        shown = raw if len(str(raw)) <= 60 else f"{str(raw)[:57]}..."
        raise InputFileError(name, f"metadata 'label_names' must be a JSON list of strings "
                                   f"(label k's name at index k), got {shown!r}")
    return names


def _numpy_kind(p: Path) -> str | None:
    """"npz" or "npy" for a numpy file (by its first bytes, else its suffix), None otherwise."""
    from embeval.data.numpy_io import sniff

    kind = sniff(p)
    return None if kind == "safetensors" else kind


def _load_numpy(p: Path, kind: str) -> EmbeddingSet:
    """A ``.npz`` embedding file (read whole, never unpickled); a ``.npy`` is refused."""
    from embeval.data.numpy_io import load_npz

    if kind == "npy":
        raise InputFileError(p, "a .npy file holds one array (no labels): save an .npz with "
                                "np.savez(f, embeddings=E, labels=L), or convert it with its "
                                "labels (`embeval convert`)")
    return load_npz(p)


def _open(path: Path):  # noqa: ANN202 - safetensors' handle type is private
    return safe_open(str(path), framework="pt")


def _validate(name: str, shape: tuple[int, ...] | None, dtype: torch.dtype | None,
              labels: torch.Tensor, cameras: torch.Tensor | None,
              paths: Sequence[str] | None) -> None:
    if shape is None or len(shape) != 2:
        raise InputFileError(name, f"embeddings must be 2-D [N, D], got shape {list(shape or [])}")
    n, d = shape
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise InputFileError(name, "embeddings must be float32, float16 or bfloat16 (or float64, "
                                   f"read as float32), got {dtype}")
    if n == 0 or d == 0:
        raise InputFileError(name, f"empty set: embeddings have shape [{n}, {d}]")
    for key, t in (("labels", labels), ("cameras", cameras)):
        if t is not None:
            _check_ids(name, key, t, n)
    if paths is not None and len(paths) != n:
        raise InputFileError(name, f"{len(paths)} paths for {n} embeddings")


def _check_ids(name: str, key: str, t: torch.Tensor, n: int) -> None:
    """Per-item ids (labels, cameras, templates, ...) must be int64 [n]."""
    if t.dtype != torch.int64:
        hint = (f" (if they are whole numbers, convert them: {key}.long() or "
                ".astype('int64'))" if t.is_floating_point() else "")
        raise InputFileError(name, f"{key!r} must be integers (int64, int32, ...), got "
                                   f"{str(t.dtype).removeprefix('torch.')}{hint}")
    if t.dim() != 1:
        raise InputFileError(name, f"{key!r} must be 1-D [N], got shape {list(t.shape)}")
    if t.numel() != n:
        raise InputFileError(name, f"{key!r} has {t.numel()} entries but embeddings have "
                                   f"{n} rows")


def _as_ids(name: str, key: str, values: object) -> torch.Tensor:
    """Labels / cameras as a tensor: integer dtypes become int64 (lossless); anything else is
    returned unconverted for :func:`_validate` to refuse. Shape is kept (never flattened)."""
    try:
        t = values if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise InputFileError(name, f"{key!r} must be integers (class ids): {e}") from None
    if t.numel() == 0 and t.is_floating_point():  # torch.as_tensor([]) is float32
        return t.long()
    if t.dtype == torch.int64 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        return t
    if t.dtype == getattr(torch, "uint64", None):  # torch cannot compare uint64: via numpy
        values = t.numpy()
        if values.size and int(values.max()) >= 2**63:
            raise InputFileError(name, f"{key!r}: uint64 values from 2**63 up do not fit int64")
        return torch.from_numpy(values.astype("int64"))
    return t.long()


def _to_float32(name: str, emb: torch.Tensor) -> torch.Tensor:
    """float64 [N, D] → float32, refusing NaN / Inf and values beyond float32's range."""
    out = emb.float()
    _check_finite(name, out, 0, emb)
    return out


def _check_finite(name: str, block: torch.Tensor, offset: int,
                  source: torch.Tensor | None = None) -> None:
    """Raise on the first row holding a NaN or Inf.

    A NaN or Inf makes its row's sum non-finite, so only rows with a non-finite sum (a few, or
    finite rows whose sum overflows) get the exact check: ~100x faster than ``isfinite(block)``.
    ``source``: the float64 rows ``block`` was converted from; a row finite there overflowed
    float32, and the message says so.
    """
    if not block.is_floating_point():
        return
    suspects = torch.nonzero(~torch.isfinite(block.sum(dim=1, dtype=torch.float32))).flatten()
    if len(suspects):
        bad = suspects[~torch.isfinite(block[suspects]).all(dim=1)]
        if len(bad):
            row = int(bad[0])
            if source is not None and bool(torch.isfinite(source[row]).all()):
                raise InputFileError(name, f"embedding row {row + offset} has a value beyond "
                                           f"float32's range (|x| > {_F32_MAX:.4g}); rescale the "
                                           "embeddings")
            raise InputFileError(name, f"embedding row {row + offset} contains NaN or Inf")
