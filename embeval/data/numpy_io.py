"""numpy inputs: ``.npz`` embedding files and ``.npy`` arrays, read without ever unpickling.

A ``.npz`` embedding file holds the arrays ``embeddings`` [N, D] (float), ``labels`` [N]
(integers), and optionally ``cameras`` [N] (integers) and ``paths`` [N] (unicode, ``<U``),
as ``np.savez(f, embeddings=..., labels=...)`` writes them (compressed or not). It is read
whole into memory (convert it with :func:`convert` for a lazily read safetensors file).

The ``.npy`` members are parsed here (numpy's format 1.0 / 2.0 / 3.0): the magic, the version,
the header (a Python dict literal, read by ``ast.literal_eval`` after checking it is one dict
of ``descr`` / ``fortran_order`` / ``shape``), then exactly ``prod(shape) * itemsize`` raw bytes.
Only plain numeric dtypes (bool, integers, floats) and unicode strings are accepted: an object
array (``dtype=object``, which numpy would unpickle), a structured or any other dtype is refused
with :class:`~embeval.errors.InputFileError` naming the file and the array. Members that are
not asked for are never parsed.
"""

from __future__ import annotations

import ast
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch

from embeval.data.host_memory import check_allocation, human
from embeval.data.store import EmbeddingSet, save
from embeval.errors import InputFileError
from embeval.outputs import check_outputs

__all__ = ["NPY_MAGIC", "ZIP_MAGIC", "read_npy", "read_npz", "load_npz", "read_npz_ids",
           "convert", "NumpyFileSet"]

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first member, an empty zip
MAX_HEADER = 10_000  # bytes, numpy's own limit (max_header_size)
#: little/big/native/not-applicable byte order, then b(ool) i(nt) u(int) f(loat) U(nicode) + size
_DESCR = re.compile(r"^[<>|=]?([biufU])(\d+)$")
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
               ValueError, struct.error, OverflowError)


class _Bad(ValueError):
    """A .npy header or data problem (the message names the array)."""


class NumpyFileSet(EmbeddingSet):
    """An :class:`EmbeddingSet` read whole from a ``.npz`` file (in memory; ``_file`` names the
    file for fingerprints and same-file checks, its paths come from the file's ``paths``)."""

    @property
    def paths(self) -> list[str] | None:
        return self._paths


def _header(f: IO[bytes], where: str) -> tuple[np.dtype, bool, tuple[int, ...]]:
    """Parse a ``.npy`` header from ``f``: (dtype, fortran_order, shape); ``where`` names the
    array in messages. Raises ``ValueError`` with the problem."""
    magic = f.read(8)
    if len(magic) < 8 or not magic.startswith(NPY_MAGIC):
        raise _Bad(f"{where}: not a .npy array (no \\x93NUMPY magic)")
    major = magic[6]
    if major not in (1, 2, 3) or magic[7] != 0:
        raise _Bad(f"{where}: unsupported .npy format version {magic[6]}.{magic[7]}")
    size_bytes = f.read(2 if major == 1 else 4)
    if len(size_bytes) != (2 if major == 1 else 4):
        raise _Bad(f"{where}: truncated .npy header")
    length = int.from_bytes(size_bytes, "little")
    if length > MAX_HEADER:
        raise _Bad(f"{where}: .npy header of {length} bytes (more than {MAX_HEADER})")
    raw = f.read(length)
    if len(raw) != length:
        raise _Bad(f"{where}: truncated .npy header")
    text = raw.decode("utf-8" if major == 3 else "latin1", errors="replace").strip()
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _Bad(f"{where}: .npy header is not a Python dict literal") from None
    if not isinstance(tree, ast.Dict):
        raise _Bad(f"{where}: .npy header is not a Python dict literal")
    try:
        d = ast.literal_eval(tree)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise _Bad(f"{where}: .npy header is not a Python dict literal") from None
    if set(d) != {"descr", "fortran_order", "shape"}:
        raise _Bad(f"{where}: .npy header keys {sorted(map(str, d))}, expected descr, "
                   "fortran_order, shape")
    descr, fortran, shape = d["descr"], d["fortran_order"], d["shape"]
    if not isinstance(fortran, bool):
        raise _Bad(f"{where}: .npy header fortran_order {fortran!r} is not True/False")
    if (not isinstance(shape, tuple) or len(shape) > 32
            or not all(type(s) is int and s >= 0 for s in shape)):
        raise _Bad(f"{where}: .npy header shape {shape!r} is not a tuple of sizes")
    return _dtype(descr, where), fortran, shape


def _dtype(descr: object, where: str) -> np.dtype:
    """The dtype of a header's ``descr``: plain numbers and unicode strings only."""
    if isinstance(descr, str) and "O" in descr:
        raise _Bad(f"{where}: is an object array (dtype=object), which only unpickling "
                   "could read: refused; save numbers, or strings as a unicode array "
                   "(np.array(paths, dtype=str))")
    m = _DESCR.match(descr) if isinstance(descr, str) else None
    if m is None:
        raise _Bad(f"{where}: dtype {descr!r} is not supported (plain numbers or unicode "
                   "strings only)")
    try:
        dtype = np.dtype(m.group(0))
    except TypeError:
        raise _Bad(f"{where}: dtype {descr!r} is not supported") from None
    if dtype.hasobject or dtype.kind not in "biufU":
        raise _Bad(f"{where}: dtype {descr!r} is not supported")
    if dtype.kind == "f" and dtype.itemsize > 8:
        raise _Bad(f"{where}: dtype {descr!r} ({dtype.itemsize * 8}-bit long double) is not "
                   "supported: save float64 or float32 (arr.astype(np.float64))")
    return dtype


def _array(f: IO[bytes], where: str, size: int | None, member: bool = False) -> np.ndarray:
    """One ``.npy`` array from ``f`` (native byte order, C-contiguous). ``size``: the stream's
    total bytes when known (the file's, or a zip ``member``'s declared size), checked against
    the header, and the array against the memory available, before anything is allocated;
    the data is then read in place (never a second copy)."""
    dtype, fortran, shape = _header(f, where)
    count = 1
    for s in shape:
        count *= s
    nbytes = count * dtype.itemsize
    if size is not None and f.tell() + nbytes != size:
        raise _Bad(f"{where}: the header announces {nbytes} bytes of data, the "
                   f"{'member' if member else 'file'} holds {size - f.tell()} (truncated or "
                   "corrupt)")
    if (problem := check_allocation(nbytes, f"{where} of shape {list(shape)} {dtype}")) is not None:
        raise _Bad(problem)
    flat = np.empty(count, dtype=dtype)
    view = flat.view(np.uint8).data if nbytes else memoryview(bytearray())
    done = 0
    while done < nbytes:
        got = f.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            raise _Bad(f"{where}: truncated data ({done} of {nbytes} bytes)")
        done += got
    if f.read(1):
        raise _Bad(f"{where}: trailing bytes after the array's data")
    out = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    return out.astype(dtype.newbyteorder("="), order="C", copy=False)


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """The array of a ``.npy`` file (plain numbers or unicode strings; never unpickled).

    Raises :class:`InputFileError` naming the file and the problem.
    """
    p = Path(path)
    _check_regular(p)
    try:
        with open(p, "rb") as f:
            return _array(f, "array", p.stat().st_size)
    except _Bad as e:
        raise InputFileError(p, str(e)) from None
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None


def read_npz(path: str | os.PathLike[str], names: Sequence[str],
             required: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays ``names`` of a ``.npz`` file that it holds (``required`` ones must be there).

    Raises :class:`InputFileError` naming the file (and the array) and the problem.
    """
    p = Path(path)
    _check_regular(p)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(p) as z:
            members = {i.filename.removesuffix(".npy"): i for i in z.infolist()
                       if i.filename.endswith(".npy")}
            for name in required:
                if name not in members:
                    found = ", ".join(sorted(members)) or "none"
                    raise InputFileError(p, f"missing array {name!r} (found: {found})")
            for name in names:
                if name in members:
                    info = members[name]
                    _check_member(info, f"array {name!r}", p.stat().st_size)
                    with z.open(info) as f:
                        out[name] = _array(f, f"array {name!r}", info.file_size, member=True)
    except _Bad as e:
        raise InputFileError(p, str(e)) from None
    except _ZIP_ERRORS as e:
        raise InputFileError(p, f"not a readable .npz file ({e})") from None
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None
    return out


#: deflate's largest expansion (258-byte matches from 2-bit codes, ~1032:1), with slack for
#: block headers: a member declaring more than this per compressed byte is a bomb or damaged
MAX_DEFLATE_RATIO = 1040


def _check_member(info: zipfile.ZipInfo, where: str, file_size: int) -> None:
    """A member's declared sizes against its compressed bytes and the file, before reading."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _Bad(f"{where}: compression method {info.compress_type} is not one numpy writes "
                   "(stored or deflated: np.savez, np.savez_compressed); its expansion is not "
                   "bounded before reading")
    if info.compress_size > file_size:
        raise _Bad(f"{where}: the member declares {info.compress_size} compressed bytes in a "
                   f"{file_size}-byte file (truncated or corrupt)")
    if (info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1
            and info.file_size != info.compress_size):
        raise _Bad(f"{where}: a stored (uncompressed) member declares {info.file_size} bytes "
                   f"but holds {info.compress_size} (corrupt)")
    if (info.compress_type == zipfile.ZIP_DEFLATED
            and info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024):
        raise _Bad(f"{where}: the member declares {human(info.file_size)} from "
                   f"{info.compress_size} compressed bytes, more than deflate can expand "
                   f"(at most {MAX_DEFLATE_RATIO}:1): a zip bomb or a damaged file")


def load_npz(path: str | os.PathLike[str]) -> NumpyFileSet:
    """An embedding set from a ``.npz`` file (``embeddings``, ``labels``, optional ``cameras``
    and ``paths``), validated as :func:`embeval.load` validates a safetensors file."""
    p = Path(path)
    arrays = read_npz(p, ("embeddings", "labels", "cameras", "paths"),
                      required=("embeddings", "labels"))
    paths = _paths(p, arrays["paths"]) if "paths" in arrays else None
    emb = arrays["embeddings"]
    if emb.dtype.kind != "f" or emb.ndim != 2:
        raise InputFileError(p, f"'embeddings' must be a 2-D [N, D] float array, got {emb.dtype} "
                                f"{list(emb.shape)}")
    labels = _ids(p, "labels", arrays["labels"])
    assert labels is not None  # a required array
    try:
        return NumpyFileSet(torch.from_numpy(emb), labels, _ids(p, "cameras", arrays.get("cameras")),
                            paths=paths, name=str(p), _file=p)
    except InputFileError:
        raise
    except (ValueError, TypeError) as e:
        raise InputFileError(p, str(e)) from None


def read_npz_ids(path: str | os.PathLike[str], key: str) -> np.ndarray | None:
    """One optional per-item array ``key`` of a ``.npz`` file (None when absent)."""
    return read_npz(path, (key,)).get(key)


def _ids(p: Path, key: str, arr: np.ndarray | None) -> torch.Tensor | None:
    """Per-item ids as a tensor (numbers only; :class:`EmbeddingSet` checks dtype and shape)."""
    if arr is None:
        return None
    if arr.dtype.kind not in "biuf":
        raise InputFileError(p, f"{key!r} must be integers (class ids), got {arr.dtype}")
    return torch.from_numpy(arr)


def _paths(p: Path, arr: np.ndarray) -> list[str]:
    if arr.dtype.kind != "U" or arr.ndim != 1:
        raise InputFileError(p, f"'paths' must be a 1-D unicode array (np.array(paths, "
                                f"dtype=str)), got {arr.dtype} {list(arr.shape)}")
    return [str(x) for x in arr.tolist()]


def _check_regular(p: Path) -> None:
    if not p.exists():
        raise InputFileError(p, "no such file")
    if not p.is_file():
        raise InputFileError(p, "is not a regular file")


def convert(source: str | os.PathLike[str], out: str | os.PathLike[str], *,
            labels: str | os.PathLike[str] | None = None,
            cameras: str | os.PathLike[str] | None = None,
            paths: str | os.PathLike[str] | None = None,
            metadata: dict[str, str] | None = None) -> Path:
    """Write the embedding file ``out`` (safetensors, read lazily) from numpy arrays.

    ``source``: a ``.npz`` embedding file, or a ``.npy`` [N, D] float array (then ``labels`` is
    required). ``labels`` / ``cameras``: ``.npy`` [N] integer arrays (replacing the ``.npz``'s);
    ``paths``: a text file, one path per line (UTF-8), or a ``.npy`` unicode array.
    Written atomically with :func:`embeval.save` (complete or absent).
    """
    src = Path(source)
    given = [Path(x) for x in (labels, cameras, paths) if x is not None]
    check_outputs({"output": out}, inputs=[src, *given])
    if sniff(src) == "npz":
        arrays = read_npz(src, ("embeddings", "labels", "cameras", "paths"),
                          required=("embeddings",) if labels is not None else ("embeddings", "labels"))
        emb, lab, cam = arrays["embeddings"], arrays.get("labels"), arrays.get("cameras")
        pth = _paths(src, arrays["paths"]) if "paths" in arrays else None
    else:
        emb, lab, cam, pth = read_npy(src), None, None, None
        if labels is None:
            raise InputFileError(src, "a .npy array holds the embeddings only: give labels (a "
                                      ".npy of [N] integers)", param="labels")
    if labels is not None:
        lab = read_npy(labels)
    if cameras is not None:
        cam = read_npy(cameras)
    lab_t, cam_t = _ids(src, "labels", lab), _ids(src, "cameras", cam)
    assert lab_t is not None  # required above
    if paths is not None:
        pth = _read_paths_file(Path(paths))
    if emb.dtype.kind != "f" or emb.ndim != 2:
        raise InputFileError(src, f"embeddings must be a 2-D [N, D] float array, got {emb.dtype} "
                                  f"{list(emb.shape)}")
    if paths is not None and pth is not None and len(pth) != len(emb):
        raise InputFileError(paths, f"holds {len(pth)} paths, the embeddings {len(emb)} rows: "
                                    "one path per row")
    tensor = torch.from_numpy(emb)
    EmbeddingSet(tensor, lab_t, cam_t, paths=pth, name=str(src))  # refuses mismatched sizes, NaN
    return save(out, tensor, lab_t, cam_t, metadata=metadata, paths=pth)


#: characters refused inside a path line: C0 controls but tab, DEL, C1 controls, and the
#: Unicode line / paragraph separators (Python's ``splitlines`` would split at many of them)
_BAD_IN_PATH = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _read_paths_file(p: Path) -> list[str]:
    """The paths of a text file: UTF-8, one path per line, lines separated by LF (a CR before
    it is dropped: CR LF files read the same); a UTF-8 byte-order mark at the start is
    stripped (it is never part of a path); a last line without LF counts. Any other control
    character in a line (CR alone, form feed, U+001C..U+001F, U+0085, U+2028, NUL...) is an
    error naming the line, never a silent split."""
    if sniff(p) == "npy":
        return _paths(p, read_npy(p))
    _check_regular(p)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise InputFileError(p, f"cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = raw.count(b"\n", 0, e.start) + 1
        raise InputFileError(p, f"line {at}: not UTF-8 text ({e.reason} at byte {e.start})") \
            from None
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the LF that ends the last line
    out: list[str] = []
    for i, raw_line in enumerate(lines, 1):
        line = raw_line.removesuffix("\r")
        if (bad := _BAD_IN_PATH.search(line)) is not None:
            raise InputFileError(p, f"line {i}: character U+{ord(bad.group()):04X} in a path: a "
                                    "paths file holds one path per line, lines end in LF (or "
                                    "CR LF), and paths hold no control characters")
        out.append(line)
    return out


def sniff(p: Path) -> str:
    """"npz", "npy" or "safetensors": by the file's first bytes, else by its suffix."""
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError:
        head = b""
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC):
        return "npz"
    suffix = p.suffix.lower()
    return "npz" if suffix == ".npz" else "npy" if suffix == ".npy" else "safetensors"
