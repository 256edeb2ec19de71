"""EvalOptions: one validated options type; core errors name the Python parameter, never a flag."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import embeval
from embeval.cli import flag_message
from embeval.options import EvalOptions

PACKAGE = Path(embeval.__file__).parent
#: products whose messages still name their command's flags (extract, train: not yet moved)
NOT_YET: tuple[str, ...] = ()


def _sets() -> tuple[embeval.EmbeddingSet, embeval.EmbeddingSet]:
    q = embeval.EmbeddingSet(torch.eye(3), torch.tensor([0, 1, 2]))
    return q, embeval.EmbeddingSet(torch.eye(3), torch.tensor([0, 1, 2]))


def test_result_options_keep_the_json_keys_and_order() -> None:
    o = EvalOptions(metric="inner", exclude_self=True, aggregate=None, device="cpu")
    assert list(o.result_options().items()) == [
        ("metric", "inner"), ("exclude_same_camera", False), ("exclude_self", True),
        ("aggregate", "none"), ("no_positive", "skip"), ("precision", "fp32"),
            ("ap", "standard")]
    q, g = _sets()
    assert embeval.evaluate(q, g, o, ks=(1,)).options == o.to_dict()
    # keywords override the options object; the old keyword form still works
    assert embeval.evaluate(q, g, o, ks=(1,), metric="euclid").options["metric"] == "euclid"
    with pytest.raises(TypeError, match="metrc"):
        embeval.evaluate(q, g, ks=(1,), metrc="inner")


@pytest.mark.parametrize(("kwargs", "start", "flag_line"), [
    (dict(metric="l2"), "metric: unknown metric 'l2' (inner, cosine, euclid, sq_euclid)",
     "--metric: unknown metric 'l2'"),
    (dict(no_positive="drop"), "no_positive: unknown policy", "--no-positive: unknown policy"),
    (dict(precision="fp8"), "precision: unknown precision", "--precision: unknown precision"),
    (dict(memory="lots"), "memory: cannot read 'lots'", "--memory: cannot read 'lots'"),
    (dict(aggregate="mean", exclude_self=True),
     "aggregate mean cannot be combined with exclude_same_camera or exclude_self",
     "--aggregate mean cannot be combined with --exclude-same-camera or --exclude-self"),
    (dict(ks=(0,)), "ks 0: must be between 1 and the gallery size (3)",
     "-k 0: must be between 1 and the gallery size (3)"),
    (dict(device="tpu"), "device: unknown device 'tpu'", "--device: unknown device 'tpu'"),
])
def test_python_errors_name_the_parameter_and_the_cli_its_flag(kwargs: dict, start: str,
                                                               flag_line: str) -> None:
    q, g = _sets()
    with pytest.raises(embeval.OptionError) as e:
        embeval.evaluate(q, g, **{"ks": (1,), **kwargs})
    assert str(e.value).startswith(start)
    assert flag_message(e.value).startswith(flag_line)


def test_exclude_self_error_names_the_parameter() -> None:
    q, _ = _sets()
    g = embeval.EmbeddingSet(torch.eye(3)[:2], torch.tensor([0, 1]))
    with pytest.raises(embeval.OptionError, match=r"^exclude_self needs the same set") as e:
        embeval.evaluate(q, g, ks=(1,), exclude_self=True, device="cpu")
    assert flag_message(e.value).startswith("--exclude-self needs the same set")


def _flag_strings(path: Path) -> list[str]:
    """String literals (f-string parts included) of raise statements that name a flag (``--x``,
    ``-k``); a whole command line in backticks (`embeval merge ...`) is advice, not a name."""
    found = []
    for raise_ in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(raise_, ast.Raise):
            continue
        for node in ast.walk(raise_):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = re.sub(r"`[^`]*`?", "", node.value)
                if re.search(r"(^|[\s(])(--(\w|$)|-k\b)", text):  # "--" + name too
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {text[:60]!r}")
    return found


def test_no_core_message_names_a_flag() -> None:
    """Flags belong to embeval/cli/ (cli.flag_message maps parameters to them)."""
    skip = ("cli", *NOT_YET)
    files = [p for p in sorted(PACKAGE.rglob("*.py"))
             if p.relative_to(PACKAGE).parts[0] not in skip]
    assert len(files) > 20
    bad = [hit for p in files for hit in _flag_strings(p)]
    assert not bad, "core messages that name a command-line flag:\n" + "\n".join(bad)
