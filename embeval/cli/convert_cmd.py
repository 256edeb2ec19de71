"""``embeval convert IN.npz|IN.npy [--labels L.npy] [--cameras C.npy] -o OUT.safetensors``.

numpy arrays to the embedding file the other commands read lazily; nothing is unpickled
(:mod:`embeval.data.numpy_io`). Importing this module does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from embeval.errors import OptionError

from ._app import app
from .evaluate_cmds import examples, require_files

CONVERT_EXAMPLES = examples(
    "embeval convert emb.npz -o emb.safetensors",
    "embeval convert emb.npy --labels labels.npy --cameras cams.npy --paths paths.txt -o emb.safetensors")


def _npy(help_: str, name: str) -> typer.models.OptionInfo:
    return typer.Option(name, metavar="FILE", help=help_)


@app.command(epilog=CONVERT_EXAMPLES)
def convert(
    source: Annotated[Path, typer.Argument(
        metavar="IN", help="A .npz embedding file (embeddings, labels[, cameras, paths]) or a "
                           ".npy [N, D] float array.", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        "-o", "--out", metavar="FILE", help="The embedding file to write (.safetensors).")] = None,
    labels: Annotated[Path | None, _npy(".npy [N] integer labels (required with a .npy IN; "
                                        "replaces the .npz's).", "--labels")] = None,
    cameras: Annotated[Path | None, _npy(".npy [N] integer camera ids.", "--cameras")] = None,
    paths: Annotated[Path | None, _npy("Item paths: text, one per line (UTF-8), or a .npy "
                                       "unicode array.", "--paths")] = None,
    source_dir: Annotated[str | None, typer.Option(
        "--source", metavar="DIR", help="Record the folder the paths are relative to (metadata "
                                        "'source', where `embeval show` finds the images).")] = None,
) -> None:
    """Convert numpy arrays (.npz / .npy) into an embedding file; never unpickles."""
    if out is None:
        raise OptionError("-o FILE: give the embedding file to write (OUT.safetensors)")
    inputs = [source, *(p for p in (labels, cameras, paths) if p is not None)]
    require_files(inputs)
    from embeval.outputs import check_outputs

    check_outputs({"-o": out}, inputs=inputs)
    from embeval.data.numpy_io import convert as run

    written = run(source, out, labels=labels, cameras=cameras, paths=paths,
                  metadata={"source": source_dir} if source_dir else None)
    from ._app import stderr

    stderr.print(f"embeval convert: wrote {written}", highlight=False, soft_wrap=True)
