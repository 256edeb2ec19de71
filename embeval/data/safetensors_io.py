"""Deterministic safetensors writing: same tensors and metadata, same bytes, in any process.

The safetensors library serialises ``__metadata__`` from a hash map, so its key order (and
the file's bytes) changes from process to process. Every safetensors file embeval writes
goes through :func:`write_safetensors` (or, for tensors that arrive in row blocks,
:func:`plan_layout` + :meth:`Layout.header`), which fixes the layout:

- 8 bytes: the header's length N, unsigned little-endian;
- N bytes: compact JSON ``{"__metadata__": {...sorted keys...}, name: {"dtype", "shape",
  "data_offsets"}, ...}`` (``__metadata__`` left out when empty), padded with spaces so the
  data starts at a multiple of 8, as the safetensors library pads it;
- the data: tensors one after another, by element size (largest first) then name, so every
  tensor starts at a multiple of its element size; each tensor C-contiguous, little-endian.

Files written here read back with ``safetensors.safe_open`` / ``load_file``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open

from embeval.errors import InputFileError

__all__ = ["Layout", "plan_layout", "write_safetensors", "tensor_digest", "DTYPE_NAMES",
           "read_named"]

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
for _name, _code in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"),
                     ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):  # newer torch only
        DTYPE_NAMES[getattr(torch, _name)] = _code

Spec = tuple[str, torch.dtype, tuple[int, ...]]


@dataclass(frozen=True)
class Layout:
    """Where each tensor lies: ``offsets[name] = (begin, end)`` in bytes from the data start."""

    header: bytes  # the 8-byte length and the padded JSON header: write it first
    offsets: dict[str, tuple[int, int]]
    order: tuple[str, ...]  # tensor names in data order
    data_size: int  # bytes of data after the header


def _nbytes(dtype: torch.dtype, shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty(0, dtype=dtype).element_size()


def plan_layout(specs: Iterable[Spec], metadata: Mapping[str, str] | None = None) -> Layout:
    """The deterministic header and data offsets of tensors ``specs`` = (name, dtype, shape).

    Raises ``TypeError`` for a dtype safetensors cannot hold or non-string metadata.
    """
    specs = list(specs)
    names = [s[0] for s in specs]
    if len(set(names)) != len(names) or "__metadata__" in names:
        raise ValueError(f"tensor names must be unique and not '__metadata__': {names}")
    for name, dtype, _ in specs:
        if dtype not in DTYPE_NAMES:
            raise TypeError(f"tensor {name!r}: dtype {dtype} cannot be written to safetensors")
    meta = dict(metadata or {})
    bad = [k for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata must map str to str (not: {bad[:3]})")
    ordered = sorted(specs, key=lambda s: (-torch.empty(0, dtype=s[1]).element_size(), s[0]))
    header: dict[str, object] = {}
    if meta:
        header["__metadata__"] = {k: meta[k] for k in sorted(meta)}
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for name, dtype, shape in ordered:
        size = _nbytes(dtype, shape)
        offsets[name] = (pos, pos + size)
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": [int(s) for s in shape],
                        "data_offsets": [pos, pos + size]}
        pos += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return Layout(struct.pack("<Q", len(raw)) + raw, offsets,
                  tuple(s[0] for s in ordered), pos)


def _as_bytes(t: torch.Tensor):  # noqa: ANN202 - a numpy uint8 view (no copy for CPU tensors)
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy() if t.numel() else b""


def write_safetensors(f: BinaryIO, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (any device; copied to CPU) and ``metadata`` to the open binary file ``f``.

    Same tensors (names, dtypes, shapes, values) and metadata give the same bytes.
    """
    layout = plan_layout(((k, v.dtype, tuple(v.shape)) for k, v in tensors.items()), metadata)
    f.write(layout.header)
    for name in layout.order:
        f.write(_as_bytes(tensors[name]))


def tensor_digest(tensors: Mapping[str, torch.Tensor], *, prefix: bytes = b"") -> str:
    """sha256 (hex) of ``prefix`` and each tensor's name, dtype, shape and bytes, by name."""
    h = hashlib.sha256(prefix)
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, DTYPE_NAMES.get(t.dtype, str(t.dtype)),
                             list(t.shape)]).encode("utf-8"))
        h.update(_as_bytes(t))
    return h.hexdigest()


def read_named(path: str | os.PathLike[str], names: Iterable[str],
               holds: str) -> dict[str, torch.Tensor]:
    """The tensors ``names`` of a safetensors file (``safe_open``: a JSON header and raw bytes,
    nothing unpickled). ``holds``: what such a file holds, for the error that names a missing
    tensor. Raises :class:`InputFileError` naming the file."""
    names = list(names)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            missing = [n for n in names if n not in keys]
            if missing:
                raise InputFileError(path, f"missing tensor {missing[0]!r} ({holds}; found: "
                                           f"{', '.join(sorted(keys)) or 'none'})")
            return {n: f.get_tensor(n) for n in names}
    except SafetensorError as e:
        raise InputFileError(path, f"not a readable safetensors file ({e})") from None
    except OSError as e:
        raise InputFileError(path, f"cannot read ({e.strerror or e})") from None
