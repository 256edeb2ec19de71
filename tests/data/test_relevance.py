"""Relevance files (embeval.data.relevance): CSV and safetensors, read exactly or refused with
the file (and line) named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import embeval.data.relevance as vr
from embeval.data.relevance import Relevance, read_relevance, save_relevance
from embeval.errors import InputFileError, OptionError


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _csv(rows) -> str:
    return "query,gallery,relevance\n" + "".join(f"{q},{g},{r}\n" for q, g, r in rows)


def _lists(rel: Relevance) -> list[list[tuple[int, bool]]]:
    off = rel.offsets.tolist()
    return [list(zip(rel.gallery[a:b].tolist(), rel.positive[a:b].tolist()))
            for a, b in zip(off[:-1], off[1:])]


@pytest.mark.parametrize("block", [8, 32, 1 << 22])
@pytest.mark.parametrize("style", ["plain", "spaces", "crlf", "columns", "bom"])
def test_csv_is_read_sorted_per_query_at_any_block_size(tmp_path: Path, block: int, style: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [(2, 7, 1), (0, 3, -1), (0, 1, 1), (2, 0, -1), (0, 9, 1), (0, 1, 1)]  # one repeat
    if style == "columns":
        text = "relevance,query,gallery\n" + "".join(f"{r},{q},{g}\n" for q, g, r in rows)
    else:
        sep = ", " if style == "spaces" else ","
        nl = "\r\n" if style == "crlf" else "\n"
        text = "query,gallery,relevance" + nl + "".join(
            sep.join(map(str, row)) + nl for row in rows)
        text = "\ufeff" + text if style == "bom" else text
    monkeypatch.setattr(vr, "BLOCK", block)
    rel = read_relevance(_write(tmp_path / "rel.csv", text), 4, 10)
    assert _lists(rel) == [[(1, True), (3, False), (9, True)], [], [(0, False), (7, True)], []]
    assert rel.offsets.dtype == rel.gallery.dtype == torch.int64
    assert (rel.n_query, rel.n_gallery) == (4, 10)


_ERRORS = [
    ("", "line 1: empty file"),
    ("query,gallery\n0,1\n", "line 1: no 'relevance' column"),
    ("query,gallery,same\n0,1,1\n", "line 1: unknown column 'same'"),
    ("query,gallery,relevance\n", "line 2: no rows after the header row"),
    ("query,gallery,relevance\n0,1,1\n3,1,1\n", "line 3: query index 3 is out of range [0, 3)"),
    ("query,gallery,relevance\n0,1,1\n-1,1,1\n", "line 3: query index -1 is out of range"),
    ("query,gallery,relevance\n0,5,1\n", "line 2: gallery index 5 is out of range [0, 5)"),
    ("query,gallery,relevance\n0,1,1\n0,x,1\n", "line 3: gallery cell 'x' is not an integer"),
    ("query,gallery,relevance\n0,1,1.0\n", "line 2: relevance cell '1.0' is not an integer"),
    ("query,gallery,relevance\n0,1,0\n", "line 2: relevance must be 1 (positive) or -1 (junk), got 0"),
    ("query,gallery,relevance\n0,1,2\n", "line 2: relevance must be 1 (positive) or -1 (junk), got 2"),
    ("query,gallery,relevance\n0,1,1\n0,2\n", "line 3: expected 3 cells"),
    ("query,gallery,relevance\n0,1,1\n1,1,1\n0,1,-1\n",
     "line 4: pair (query 0, gallery 1) has relevance -1 here but 1 on line 2"),
    ("query,gallery,relevance\n0,1,99999999999999999999999\n", "line 2: relevance must be 1"),
    (b"query,gallery,relevance\n0,1,\xff\n", "line 2: not UTF-8 text"),
]


@pytest.mark.parametrize(("text", "message"), _ERRORS)
def test_bad_csv_names_the_file_and_line(tmp_path: Path, text: str | bytes, message: str) -> None:
    p = _write(tmp_path / "rel.csv", text)
    with pytest.raises(InputFileError) as e:
        read_relevance(p, 3, 5)
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value), str(e.value)


@pytest.mark.parametrize("block", [16, 64, 1 << 22])
def test_errors_deep_in_a_plain_file_name_their_line(tmp_path: Path, block: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the numpy path (signed cells included), in a later block: the line is exact."""
    monkeypatch.setattr(vr, "BLOCK", block)
    rows = [(i % 7, i, 1 if i % 3 else -1) for i in range(500)]
    for bad_row, value, message in [(311, (7, 0, 1), "line 313: query index 7"),
                                    (402, (0, 500, 1), "line 404: gallery index 500"),
                                    (77, (0, 77, 0), "line 79: relevance must be 1"),
                                    (450, (1, 15, 1), "line 452: pair (query 1, gallery 15) has "
                                                      "relevance 1 here but -1 on line 17")]:
        broken = rows.copy()
        broken[bad_row] = value
        with pytest.raises(InputFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_relevance(_write(tmp_path / "big.csv", _csv(broken)), 7, 500)
    rel = read_relevance(_write(tmp_path / "big.csv", _csv(rows)), 7, 500)
    assert int(rel.offsets[-1]) == 500 and int(rel.positive.sum()) == 333


def test_safetensors_round_trip(tmp_path: Path) -> None:
    rel = Relevance.from_pairs(torch.tensor([1, 0, 1, 1]), torch.tensor([4, 2, 0, 2]),
                               torch.tensor([-1, 1, 1, 1]), n_query=3, n_gallery=5)
    got = read_relevance(save_relevance(tmp_path / "rel.safetensors", rel), 3, 5)
    assert _lists(got) == [[(2, True)], [(0, True), (2, True), (4, False)], []]


def _st(tmp_path: Path, **tensors: torch.Tensor) -> Path:
    base = {"offsets": torch.tensor([0, 2, 3]), "gallery": torch.tensor([1, 3, 0]),
            "relevance": torch.tensor([1, -1, 1], dtype=torch.int8)}
    base.update(tensors)
    p = tmp_path / "rel.safetensors"
    save_file({k: v for k, v in base.items() if v.numel() >= 0 and k != "drop"}, str(p))
    return p


@pytest.mark.parametrize(("tensors", "message"), [
    ({"offsets": torch.tensor([0, 2, 3], dtype=torch.int32)}, "'offsets' must be a 1-D int64"),
    ({"relevance": torch.tensor([1, -1, 1])}, "'relevance' must be a 1-D int8 tensor, got int64"),
    ({"gallery": torch.tensor([[1, 3, 0]])}, "'gallery' must be a 1-D int64"),
    ({"offsets": torch.tensor([0, 3])}, "'offsets' has 2 entries, expected 3"),
    ({"offsets": torch.tensor([0, 3, 2])}, "'offsets' must start at 0, never decrease and end at 3"),
    ({"offsets": torch.tensor([1, 2, 3])}, "'offsets' must start at 0"),
    ({"gallery": torch.tensor([1, 5, 0])}, "'gallery' entry 1 is 5, out of range [0, 5)"),
    ({"gallery": torch.tensor([3, 1, 0])}, "'gallery' entry 1 (1) does not follow"),
    ({"gallery": torch.tensor([3, 3, 0])}, "indices must be strictly ascending"),
    ({"relevance": torch.tensor([1, 0, 1], dtype=torch.int8)}, "'relevance' entry 1 is 0"),
    ({"relevance": torch.tensor([1, -1], dtype=torch.int8)}, "'relevance' has 2 entries but"),
])
def test_bad_safetensors_names_the_file_and_problem(tmp_path: Path, tensors: dict,
                                                    message: str) -> None:
    p = _st(tmp_path, **tensors)
    with pytest.raises(InputFileError) as e:
        read_relevance(p, 2, 5)
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value), str(e.value)


def test_safetensors_missing_tensor_and_garbage(tmp_path: Path) -> None:
    p = tmp_path / "rel.safetensors"
    save_file({"offsets": torch.tensor([0, 0, 0]), "gallery": torch.zeros(0, dtype=torch.int64)},
              str(p))
    with pytest.raises(InputFileError, match="missing tensor 'relevance'"):
        read_relevance(p, 2, 5)
    p.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(InputFileError, match="not a readable safetensors file"):
        read_relevance(p, 2, 5)
    with pytest.raises(InputFileError, match="no such file"):
        read_relevance(tmp_path / "absent.csv", 2, 5)


def test_from_pairs_checks_its_arguments() -> None:
    with pytest.raises(OptionError, match="listed as both positive and junk"):
        Relevance.from_pairs(torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([1, -1]),
                             n_query=1, n_gallery=2)
    with pytest.raises(OptionError, match="gallery index 2 is out of range"):
        Relevance.from_pairs(torch.tensor([0]), torch.tensor([2]), torch.tensor([1]),
                             n_query=1, n_gallery=2)
    rel = Relevance.from_pairs(torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([-1, -1]),
                               n_query=2, n_gallery=2)
    assert _lists(rel) == [[(1, False)], []]
    assert _lists(rel.rows(1, 2)) == [[]] and _lists(rel.rows(0, 1)) == [[(1, False)]]
