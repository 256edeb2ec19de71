"""A minimal MAT-file (level 5) reader for the benchmarks' annotation files (Cars196's
``cars_annos.mat``), used when scipy is not installed. Pure parsing: no pickle, no code.

Reads numeric arrays (double, single, integers), char arrays, cells and structs, compressed
(zlib) or not, either byte order, into plain Python values: a struct array becomes a list of
dicts (field -> value), a 1 x 1 numeric array a number, other numeric arrays flat lists in
MATLAB's column-major order, char arrays strings. Objects, sparse and complex arrays are
refused with :class:`InputFileError`; so are nesting deeper than 16 levels and a compressed
element that inflates beyond 1 GiB.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

from embeval.errors import InputFileError

__all__ = ["read_mat"]

_NUMERIC = {1: "b", 2: "B", 3: "h", 4: "H", 5: "i", 6: "I", 7: "f", 9: "d", 12: "q", 13: "Q"}
_MATRIX, _COMPRESSED, _UTF8 = 14, 15, 16
_CHAR, _STRUCT, _CELL = 4, 2, 1
_NUMERIC_CLASSES = set(range(6, 16))
_MAX_INFLATE = 1 << 30
_MAX_DEPTH = 16


class _Bad(Exception):
    pass


def read_mat(path: Path) -> dict[str, Any]:
    """The named variables of a level 5 MAT-file (raises InputFileError naming ``path``)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputFileError(path, f"cannot read ({e.strerror or e})") from None
    try:
        return _Reader(data).variables()
    except (_Bad, struct.error, zlib.error, UnicodeDecodeError, IndexError) as e:
        raise InputFileError(path, f"not a readable MAT-file ({e})") from None


class _Reader:
    def __init__(self, data: bytes) -> None:
        if len(data) < 128:
            raise _Bad("shorter than the 128-byte header")
        if data[126:128] == b"IM":
            self.e = "<"
        elif data[126:128] == b"MI":
            self.e = ">"
        else:
            raise _Bad("no level 5 header (MATLAB 7.3 / HDF5 files are not read)")
        self.data = data

    def variables(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, body in self._elements(self.data, 128):
            if kind == _COMPRESSED:
                inflater = zlib.decompressobj()
                body = inflater.decompress(body, _MAX_INFLATE)
                if inflater.unconsumed_tail:
                    raise _Bad("a compressed element inflates beyond 1 GiB")
                (kind, inner), = list(self._elements(body, 0))[:1] or [(0, b"")]
                body = inner
            if kind == _MATRIX:
                name, value = self._matrix(body, 0)
                out[name] = value
        return out

    def _elements(self, buf: bytes, pos: int) -> Any:
        """(type, bytes) of each data element from ``pos`` to the end of ``buf``."""
        while pos + 8 <= len(buf):
            kind, size = struct.unpack_from(self.e + "II", buf, pos)
            if kind >> 16:  # small data element: type and size in one word, data in the next
                kind, size = kind & 0xFFFF, kind >> 16
                if size > 4:
                    raise _Bad("a small data element larger than 4 bytes")
                yield kind, buf[pos + 4:pos + 4 + size]
                pos += 8
                continue
            end = pos + 8 + size
            if end > len(buf):
                raise _Bad(f"an element of {size} bytes runs past the end (truncated)")
            yield kind, buf[pos + 8:end]
            pos = end if kind == _COMPRESSED else pos + 8 + ((size + 7) // 8) * 8

    def _matrix(self, body: bytes, depth: int) -> tuple[str, Any]:
        if depth > _MAX_DEPTH:
            raise _Bad("nesting deeper than 16 levels")
        if not body:
            return "", []
        parts = list(self._elements(body, 0))
        if len(parts) < 3:
            raise _Bad("a matrix without flags, dimensions and name")
        flags = self._values(*parts[0])
        cls, complex_ = flags[0] & 0xFF, bool(flags[0] & 0x800)
        dims = [int(v) for v in self._values(*parts[1])]
        name = bytes(parts[2][1]).decode("latin-1")
        count = 1
        for d in dims:
            count *= d
        rest = parts[3:]
        if cls == _CHAR:
            text = self._text(*rest[0]) if rest else ""
            return name, text
        if cls in _NUMERIC_CLASSES:
            if complex_:
                raise _Bad(f"{name}: complex arrays are not read")
            values = self._values(*rest[0]) if rest else []
            return name, values[0] if count == 1 and len(values) == 1 else values
        if cls == _CELL:
            return name, [self._matrix(b, depth + 1)[1] for k, b in rest if k == _MATRIX]
        if cls == _STRUCT:
            width = int(self._values(*rest[0])[0])
            raw = bytes(rest[1][1])
            fields = [raw[i:i + width].split(b"\0", 1)[0].decode("latin-1")
                      for i in range(0, len(raw), width)] if width else []
            values = [self._matrix(b, depth + 1)[1] for k, b in rest[2:] if k == _MATRIX]
            if len(values) != count * len(fields):
                raise _Bad(f"{name}: {len(values)} field values for {count} x {len(fields)}")
            records = [dict(zip(fields, values[i * len(fields):(i + 1) * len(fields)]))
                       for i in range(count)]
            return name, records
        raise _Bad(f"{name}: MATLAB class {cls} (objects, sparse, ...) is not read")

    def _values(self, kind: int, raw: bytes) -> list[Any]:
        code = _NUMERIC.get(kind)
        if code is None:
            raise _Bad(f"data type {kind} where numbers were expected")
        n = len(raw) // struct.calcsize(code)
        return list(struct.unpack_from(f"{self.e}{n}{code}", raw, 0))

    def _text(self, kind: int, raw: bytes) -> str:
        if kind in (_UTF8, 1, 2):
            return bytes(raw).decode("utf-8")
        if kind in (3, 4, 17):
            return bytes(raw).decode("utf-16-le" if self.e == "<" else "utf-16-be")
        raise _Bad(f"character data of type {kind}")
