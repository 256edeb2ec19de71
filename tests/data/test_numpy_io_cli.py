"""Hostile numpy inputs and paths files through the installed ``embeval convert`` (and ``cmc``
on a ``.npz``): exit 2 and one line, never ``ArrayMemoryError`` / ``TypeError``.

Declared sizes are checked before anything is allocated: a ``.npy``'s against the file, a zip
member's against its compressed bytes (deflate expands at most ~1032:1) and every array's
against the memory available (here made small and certain with ``RLIMIT_AS`` in the child).
"""

from __future__ import annotations

import io
import resource
import shutil
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import numpy as np
import numpy.lib.format as npf
import pytest

import embeval

EXE = shutil.which("embeval")
pytestmark = pytest.mark.skipif(EXE is None, reason="the embeval console script is not installed")
GIB = 2**30


def run(*args: object, address_space: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)


def one_line_error(res: subprocess.CompletedProcess[str], path: Path, *parts: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert f"{path.name}: " in lines[0], lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def npy(tmp_path: Path) -> tuple[Path, Path]:
    e, lab = tmp_path / "e.npy", tmp_path / "l.npy"
    np.save(e, np.arange(12, dtype=np.float32).reshape(3, 4))
    np.save(lab, np.array([0, 1, 1]))
    return e, lab


def _header(descr: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


# ---------------------------------------------------------------------------------- paths files


@pytest.mark.parametrize(("text", "parts"), [
    ("a.jpg\nb\u2028x.jpg\nc.jpg\n", ["line 2", "U+2028"]),
    ("a.jpg\nb.jpg\nc\x1cx.jpg\n", ["line 3", "U+001C"]),
    ("a.jpg\fb.jpg\nc.jpg\n", ["line 1", "U+000C"]),
    ("a.jpg\rb.jpg\rc.jpg\r", ["line 1", "U+000D"]),  # CR-only line endings
    ("a.jpg\nb\x85.jpg\nc.jpg\n", ["line 2", "U+0085"]),
])
def test_paths_lines_split_at_lf_only(npy: tuple[Path, Path], tmp_path: Path, text: str,
                                      parts: list[str]) -> None:
    p = tmp_path / "paths.txt"
    p.write_bytes(text.encode())
    out = tmp_path / "o.safetensors"
    one_line_error(run("convert", npy[0], "--labels", npy[1], "--paths", p, "-o", out), p, *parts)
    assert not out.exists()


def test_bom_is_stripped_and_crlf_reads_as_lf(npy: tuple[Path, Path], tmp_path: Path) -> None:
    p = tmp_path / "paths.txt"
    p.write_bytes("\ufeffa.jpg\r\nb \t.jpg\r\nc.jpg".encode())  # no LF after the last line
    out = tmp_path / "o.safetensors"
    res = run("convert", npy[0], "--labels", npy[1], "--paths", p, "-o", out)
    assert res.returncode == 0, res.stderr
    assert embeval.load(out).paths == ["a.jpg", "b \t.jpg", "c.jpg"]


@pytest.mark.slow
def test_too_few_paths_names_the_paths_file(npy: tuple[Path, Path], tmp_path: Path) -> None:
    p = tmp_path / "paths.txt"
    p.write_text("a.jpg\nb.jpg\n")
    line = one_line_error(run("convert", npy[0], "--labels", npy[1], "--paths", p, "-o",
                              tmp_path / "o.safetensors"), p, "2 paths", "3 rows")
    assert "e.npy" not in line


# ---------------------------------------------------------------------------------- arrays


@pytest.mark.slow
def test_long_double_is_refused_in_one_line(npy: tuple[Path, Path], tmp_path: Path) -> None:
    ld = tmp_path / "ld.npy"
    np.save(ld, np.ones((3, 4), dtype=np.longdouble))
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is float64 here")
    one_line_error(run("convert", ld, "--labels", npy[1], "-o", tmp_path / "o.safetensors"), ld,
                   "long double", "float64")


def test_sparse_100_gib_npy_is_refused_before_allocating(npy: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    big = tmp_path / "sparse.npy"
    with open(big, "wb") as f:
        f.write(_header("<f4", (100 * GIB // 2048, 512)))
        f.truncate(f.tell() + 100 * GIB)  # sparse: no disk used
    one_line_error(run("convert", big, "--labels", npy[1], "-o", tmp_path / "o.safetensors",
                       address_space=3 * GIB), big, "needs 107.4 GB", "memory available")


def test_zip_member_declaring_far_more_than_its_bytes(tmp_path: Path) -> None:
    """A member whose declared size (2 GiB, in both headers) is beyond what its 84 deflated
    bytes can expand to: refused before allocating."""
    header = _header("<f8", (2**28 - 100,))
    f = tmp_path / "claim.npz"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("embeddings.npy", header + bytes(800))
        z.writestr("labels.npy", b"x")
    raw = bytearray(f.read_bytes())
    size = len(header) + 8 * (2**28 - 100)
    struct.pack_into("<I", raw, raw.find(b"PK\x03\x04") + 22, size)
    struct.pack_into("<I", raw, raw.find(b"PK\x01\x02") + 24, size)
    f.write_bytes(bytes(raw))
    one_line_error(run("convert", f, "-o", tmp_path / "o.safetensors"), f,
                   "array 'embeddings'", "more than deflate can expand")
    one_line_error(run("cmc", f, f), f, "more than deflate can expand")


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_zip_members_numpy_never_writes_are_refused(tmp_path: Path, method: int) -> None:
    """bzip2 and lzma expand far beyond deflate's 1032:1, so a declared size cannot be checked
    against the compressed bytes: such members are refused before any decompression."""
    f = tmp_path / "other.npz"
    with zipfile.ZipFile(f, "w", method) as z:
        z.writestr("embeddings.npy", _header("<f4", (2, 3)) + bytes(24))
        z.writestr("labels.npy", _header("<i8", (2,)) + bytes(16))
    one_line_error(run("cmc", f, f), f, "array 'embeddings'", f"compression method {method}",
                   "np.savez_compressed")


def _zip(entries: list[tuple[str, bytes, int, int]]) -> bytes:
    """A zip of deflated members (name, deflated bytes, uncompressed size, crc32)."""
    body, central = b"", b""
    for name, data, size, crc in entries:
        n = name.encode()
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc,
                               len(data), size, len(n), 0, 0, 0, 0, 0, len(body)) + n
        body += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(data), size,
                            len(n), 0) + n + data
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central),
                      len(body), 0)
    return body + central + end


@pytest.mark.slow
def test_compression_bomb_is_refused_before_allocating(tmp_path: Path) -> None:
    """3 GiB of zeros from 3 MB of deflate (within deflate's ratio): refused against the memory
    available (2 GiB of address space in the child), not allocated."""
    mib = 2**20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    header = _header("<f4", (3 * GIB // 4 // 512, 512))
    first = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    piece = c.compress(bytes(mib)) + c.flush(zlib.Z_FULL_FLUSH)  # full flush: pieces repeat
    data = first + piece * (3 * GIB // mib) + c.flush()
    buf = io.BytesIO()
    np.save(buf, np.zeros(3 * GIB // 4 // 512, dtype=np.int64))
    labels = zlib.compressobj(9, zlib.DEFLATED, -15)
    lab = labels.compress(buf.getvalue()) + labels.flush()
    f = tmp_path / "bomb.npz"
    f.write_bytes(_zip([("embeddings.npy", data, len(header) + 3 * GIB, 0),
                        ("labels.npy", lab, len(buf.getvalue()), zlib.crc32(buf.getvalue()))]))
    assert f.stat().st_size < 4 * mib
    one_line_error(run("convert", f, "-o", tmp_path / "o.safetensors", address_space=2 * GIB), f,
                   "array 'embeddings'", "needs 3.2 GB", "memory available")
