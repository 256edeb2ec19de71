"""One self-contained HTML report of a result (``embeval report``): works offline, one file.

Everything is inline: CSS, a small vanilla script (no framework, no network), the plots as SVG
data URIs (``<img src="data:image/svg+xml;base64,...">``), the ranked thumbnails of the worst
queries as JPEG data URIs, and the per-query values as one JSON array rendered by a sortable
table (100 rows at a time, so that a 10,000-query report opens at once). A
Content-Security-Policy forbids every request that is not inline data.

Sections: the metrics with their intervals, the options and input fingerprints, the plots (CMC
with its bootstrap band, mean interpolated PR when the ranking's curves are given, score
distributions, ROC/DET for a verification), the per-query table, the worst queries.

Pure: :func:`report_html` returns the text (the same inputs give the same bytes: no date, fixed
SVG ids); :func:`write_report` writes it atomically. Plots need matplotlib. File names, paths
and label names are untrusted: every text is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embeval import __version__
from embeval.data.store import EmbeddingSet
from embeval.errors import InputFileError, OptionError
from embeval.options import EvalOptions
from embeval.outputs import atomic_path
from embeval.uncertainty.saved import SavedResult, query_items
from embeval.visual.figures import saved as figs
from embeval.visual.figures.saved import cmc_from_saved

__all__ = ["report_html", "write_report", "cmc_from_saved", "per_query_rows", "COLUMNS",
           "TABLE_PAGE"]

#: per-query columns of the table, in order, when the result has them: (key, header)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("n_pos", "positives"), ("first_rank", "first hit"), ("last_rank", "last hit"), ("ap", "AP"),
    ("rr", "RR"), ("map_at_r", "MAP@R"), ("r_precision", "R-prec."), ("max_f1", "max F1"),
    ("hard_pos", "hardest pos."), ("hard_neg", "hardest neg."))
TABLE_PAGE = 100  # rows rendered at a time (a "show more" button adds the next ones)
_SCORES = {"hard_pos", "hard_neg", "T@maxF1", "EER_threshold"}
_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")


@dataclass(frozen=True)
class _Section:
    title: str
    body: str
    anchor: str


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _shown(key: str, value: Any) -> str:
    """A metric as the report shows it: a percentage, a score (4 decimals) or a count."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if key in _SCORES or key.startswith("threshold@"):
        return f"{value:.4f}"
    if key.startswith("n_") or isinstance(value, bool) or isinstance(value, int):
        return f"{int(value):d}"
    return f"{100 * value:.2f}%"


# ---------------------------------------------------------------- sections


def _metrics_section(saved: SavedResult) -> str:
    ci = saved.intervals or {}
    bounds = ci.get("ci") or {}
    rows = []
    for k, v in saved.metrics.items():
        b = bounds.get(k)
        interval = (f"[{_shown(k, b[0])}, {_shown(k, b[1])}]" if b else
                    "n/a" if k in bounds else "—")
        rows.append(f"<tr><th>{_e(k)}</th><td>{_e(_shown(k, v))}</td><td>{_e(interval)}</td></tr>")
    o = ci.get("options")
    if o:
        note = (f"{100 * float(o['ci_level']):g}% interval: {_e(o.get('ci_method', ''))} over "
                f"{'queries' if o.get('ci_by') == 'query' else 'labels (identities)'}, "
                f"{_e(o.get('ci_resamples'))} resamples, seed {_e(o.get('ci_seed'))}. "
                "— : no interval (thresholds, counts, verification rates).")
    else:
        note = ("No intervals: the result was computed without <code>--ci</code> "
                "(<code>embeval report Q G</code> computes them by default).")
    n_valid = ""
    if "n_pos" in saved.per_query:
        n_valid = f" · {int((saved.per_query['n_pos'] > 0).sum())} with positives"
    sizes = f"{saved.n_query} queries × {saved.n_gallery} gallery items{n_valid}"
    return (f"<p>{_e(sizes)}</p><table class='metrics'><thead><tr><th>metric</th><th>value</th>"
            f"<th>interval</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"<p class='note'>{note}</p>")


#: options that do not shape a command's result (not shown in its report)
NOT_APPLICABLE = {"verify": {"ks", "knn_k", "pr", "ap"}, "identify": {"knn_k", "pr"}}


def _plain(v: object) -> str:
    """An option's value as text: strings as they are, lists space-separated, yes/no."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return " ".join(_plain(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def _options_section(saved: SavedResult) -> str:
    skip = NOT_APPLICABLE.get(saved.command, set())
    opts = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_plain(v))}</td></tr>"
                   for k, v in {**saved.options, **saved.extra}.items()
                   if v is not None and k not in skip)
    files = []
    for role, entries in saved.inputs.items():
        if not isinstance(entries, list):
            continue
        for fp in entries:
            if isinstance(fp, dict):
                files.append(f"<tr><th>{_e(role)}</th><td class='path'>{_e(fp.get('file'))}</td>"
                             f"<td>{_e(fp.get('size'))}</td>"
                             f"<td class='hash'>{_e(fp.get('sha256'))}</td></tr>")
    items = saved.inputs.get("query_items")
    extra = (f"<p class='note'>Query items (labels, cameras, paths): sha256 "
             f"<span class='hash'>{_e(items.get('sha256'))}</span></p>"
             if isinstance(items, dict) else "")
    return (f"<table class='kv'><tbody>{opts}</tbody></table>"
            "<h3>Input files</h3><table class='files'><thead><tr><th>role</th><th>file</th>"
            "<th>bytes</th><th>sha256 (first and last MiB)</th></tr></thead>"
            f"<tbody>{''.join(files)}</tbody></table>{extra}")


def _plots_section(saved: SavedResult, pr_curves: Any, max_rank: int) -> tuple[str, bool]:
    """The plots' HTML, and whether they are all wide (a verification result: the section then
    takes the page's width, below the metrics)."""
    figures: list[tuple[str, str]] = []
    notes: list[str] = []
    wide: set[str] = set()
    if "first_rank" in saved.per_query and "n_pos" in saved.per_query:
        figures.append(("CMC curve", figs.cmc_plot(saved, max_rank)))
    if pr_curves is not None:
        figures.append(("precision-recall curve", figs.pr_plot(pr_curves, saved)))
    elif saved.command != "verify":
        notes.append("Precision-recall curve: not in a result file (it needs every positive's "
                     "rank): <code>embeval report QUERY GALLERY</code> draws it.")
    if saved.command == "verify":
        uri, why = figs.verify_plot(saved)
        if uri is not None:
            figures.append(("ROC, DET and score distributions", uri))
            wide.add("ROC, DET and score distributions")
        else:
            notes.append(f"ROC / DET: not drawn ({_e(why)}).")
    else:
        dist = figs.distribution_plot(saved)
        if dist is not None:
            figures.append(("score distributions", dist))
            wide.add("score distributions")
        notes.append("ROC / DET: for verification results (<code>embeval verify ... "
                     "--save-result FILE</code>, then <code>embeval report FILE</code>).")
    wide_class = " class='wide'"
    imgs = "".join(f"<figure{wide_class if t in wide else ''}><img class='plot' alt='{_e(t)}' "
                   f"src='{u}'><figcaption>{_e(t)}</figcaption></figure>" for t, u in figures)
    all_wide = bool(figures) and all(t in wide for t, _ in figures)
    return (f"<div class='plots'>{imgs}</div>" + "".join(f"<p class='note'>{n}</p>" for n in notes),
            all_wide)


def cmc_extent(saved: SavedResult) -> int:
    """The CMC plot's last rank: the largest k asked (``-k``), else the rank where the curve
    reaches 100% (at most 50), within the gallery."""
    ks = saved.extra.get("ks")
    if isinstance(ks, list) and ks:
        return max(1, min(max(int(k) for k in ks), saved.n_gallery))
    cap = max(1, min(saved.n_gallery, 50))
    if "first_rank" not in saved.per_query or "n_pos" not in saved.per_query:
        return cap
    _, rate = cmc_from_saved(saved, cap)
    full = np.flatnonzero(rate >= 1.0)
    return int(full[0]) + 1 if len(full) else cap


def _number(x: float) -> float | int | None:
    if not math.isfinite(x):
        return None
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(f"{x:.6g}")


def per_query_rows(saved: SavedResult, paths: Sequence[str] | None = None,
                   label_names: Sequence[str] | None = None) -> tuple[list[str], list[list[Any]]]:
    """The per-query table: ``(headers, rows)``, one row per query: index, label, (path), then
    the :data:`COLUMNS` the result has (numbers to 6 significant digits; None = n/a)."""
    keys = [(k, h) for k, h in COLUMNS if k in saved.per_query]
    n = len(saved.query_labels)
    cols = [saved.per_query[k].double().tolist() for k, _ in keys]
    labels = saved.query_labels.tolist()

    def name(label: int) -> str | int:
        return label_names[label] if label_names and 0 <= label < len(label_names) else label

    rows = []
    for i in range(n):
        row: list[Any] = [i, name(labels[i])]
        if paths is not None:
            row.append(paths[i])
        row += [_number(c[i]) for c in cols]
        rows.append(row)
    headers = ["query", "label", *(["path"] if paths is not None else []), *(h for _, h in keys)]
    return headers, rows


def _table_section(saved: SavedResult, paths: Sequence[str] | None,
                   label_names: Sequence[str] | None) -> str:
    headers, rows = per_query_rows(saved, paths, label_names)
    if not rows:
        return "<p class='note'>No per-query values (a verification result counts trials).</p>"
    data = json.dumps({"headers": headers, "rows": rows, "page": TABLE_PAGE},
                      separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    head = "".join(f"<th data-col='{i}' title='sort'>{_e(h)}</th>" for i, h in enumerate(headers))
    return (f"<p class='note'>{len(rows)} queries; click a header to sort (again: reverse); "
            "n/a sorts last.</p>"
            f"<table id='per-query' class='per-query'><thead><tr>{head}</tr></thead><tbody>"
            "</tbody></table><p><button id='more' type='button'>show more</button> "
            "<button id='all' type='button'>show all</button> <span id='shown'></span></p>"
            f"<script type='application/json' id='per-query-data'>{data}</script>")


def _worst_section(saved: SavedResult, query: EmbeddingSet | None, gallery: EmbeddingSet | None,
                   worst: int, top: int, options: EvalOptions | None,
                   images_root: str | os.PathLike[str] | None) -> str:
    from embeval.visual.rankings import choose_queries

    if "ap" not in saved.per_query or worst == 0:
        return "<p class='note'>No per-query AP in this result: no worst queries.</p>"
    ap = saved.per_query["ap"]
    if bool(torch.isnan(ap).all()):
        return "<p class='note'>No query has a positive: no worst queries.</p>"
    picked = choose_queries(ap, worst=worst)
    if query is None or gallery is None:
        rows = "".join(f"<li>query {i}: AP {float(ap[i]):.4f}</li>" for i in picked)
        return (f"<ol>{rows}</ol><p class='note'>No thumbnails: give the embedding files "
                "(<code>embeval report RESULT --query Q --gallery G</code>).</p>")
    if saved.options.get("aggregate", "none") != "none":
        return "<p class='note'>No thumbnails: the gallery was aggregated (--aggregate mean).</p>"
    return _thumbnails(saved, query, gallery, picked, top, options, images_root)


def _thumbnails(saved: SavedResult, query: EmbeddingSet, gallery: EmbeddingSet, picked: list[int],
                top: int, options: EvalOptions | None,
                images_root: str | os.PathLike[str] | None) -> str:
    from embeval.visual.ranked import Geometry, item_image_paths, ranked_image
    from embeval.visual.rankings import query_rankings

    o = options or _options_of(saved)
    rankings = query_rankings(query, gallery, picked, top=min(top, gallery.n), options=o)
    found = {"query": item_image_paths(query, images_root),
             "gallery": item_image_paths(gallery, images_root)}

    def image_of(which: str, index: int) -> Path | None:
        paths = found[which]
        return paths[index] if paths is not None else None

    ap, first = saved.per_query["ap"], saved.per_query.get("first_rank")
    parts = []
    for r in rankings:
        r.ap = float(ap[r.index])
        r.first_rank = float(first[r.index]) if first is not None else math.inf
        im = ranked_image(r, image_of, geometry=Geometry(tile=88, caption=36, header=24, font=14),
                          label_names=gallery.label_names)
        uri = _image_uri(im)
        parts.append(f"<figure class='ranked'><img class='thumb' alt='query {r.index}' "
                     f"src='{uri}'></figure>")
    note = ("Frames: blue = query, green = positive, red = negative, grey = excluded by the "
            "protocol; under each tile its rank and score.")
    if all(v is None for v in found.values()):
        note += " The files record no item paths: every image is a placeholder."
    return "".join(parts) + f"<p class='note'>{note}</p>"


def _image_uri(im: Any) -> str:
    """A Pillow image as the smaller of a lossless PNG and a JPEG (quality 80) data URI: flat
    frames, text and small upscaled images compress best as PNG, photographs as JPEG."""
    encoded = []
    for fmt, kw in (("png", {"optimize": True}), ("jpeg", {"quality": 80, "optimize": True})):
        buf = io.BytesIO()
        im.save(buf, format=fmt.upper(), **kw)
        encoded.append((len(buf.getvalue()), fmt, buf.getvalue()))
    _, fmt, data = min(encoded)
    return f"data:image/{fmt};base64," + base64.b64encode(data).decode("ascii")


def _options_of(saved: SavedResult) -> EvalOptions:
    o = saved.options
    return EvalOptions(metric=str(o.get("metric", "cosine")),
                       exclude_same_camera=bool(o.get("exclude_same_camera", False)),
                       exclude_self=bool(o.get("exclude_self", False)),
                       precision=str(o.get("precision", "fp32")), device="cpu")


def check_sets(saved: SavedResult, query: EmbeddingSet, gallery: EmbeddingSet) -> None:
    """:class:`InputFileError` unless ``query`` / ``gallery`` are the sets the result ranked
    (sizes, and the query items' digest when the result recorded it)."""
    if query.n != saved.n_query:
        raise InputFileError(query.name, f"has {query.n} items but the result ranked "
                                         f"{saved.n_query} queries")
    if gallery.n != saved.n_gallery:
        raise InputFileError(gallery.name, f"has {gallery.n} items but the result ranked "
                                           f"{saved.n_gallery} gallery items")
    recorded = saved.inputs.get("query_items")
    if isinstance(recorded, dict) and recorded.get("sha256"):
        got = query_items(query.labels, query.cameras, query.paths if recorded.get("paths")
                          else None)["sha256"]
        if got != recorded["sha256"]:
            raise InputFileError(query.name, "its labels, cameras or paths are not those of the "
                                             "result's queries")


# ---------------------------------------------------------------- the page


def report_html(saved: SavedResult, *, query: EmbeddingSet | None = None,
                gallery: EmbeddingSet | None = None, pr_curves: Any = None, worst: int = 10,
                top: int = 8, max_rank: int | None = None, options: EvalOptions | None = None,
                images_root: str | os.PathLike[str] | None = None, title: str = "") -> str:
    """The report of ``saved`` as one HTML document (text).

    ``query`` / ``gallery``: the embedding sets the result ranked (checked), for the worst
    queries' ranked thumbnails (``worst`` queries by AP, ``top`` results each) and the query
    paths in the table; ``pr_curves``: an ``EvalResult.pr_curves`` (``pr=True``) for the PR
    curve; ``max_rank``: the CMC plot's last rank (default :func:`cmc_extent`: the largest
    k asked, else where the curve reaches 100%, at most 50);
    ``options``: how the thumbnails' ranking runs (default: the result's metric and protocol,
    on the CPU); ``images_root``: as ``embeval show --images-root``.
    """
    if worst < 0 or top < 1:
        raise OptionError(f"worst {worst}, top {top}: worst must be >= 0 and top >= 1",
                          param=("worst", "top"))
    if (query is None) != (gallery is None):
        raise OptionError("query, gallery: give both sets or neither", param=("query", "gallery"))
    if query is not None and gallery is not None:
        check_sets(saved, query, gallery)
    k = max_rank if max_rank is not None else cmc_extent(saved)
    paths = query.paths if query is not None and query.paths is not None else None
    names = gallery.label_names if gallery is not None else None
    heading = title or f"embeval {saved.command} report"
    plots, plots_wide = _plots_section(saved, pr_curves, k)
    per_query = "ap" in saved.per_query  # a verification result has none: no empty sections
    sections = [
        _Section("Metrics", _metrics_section(saved), "metrics"),
        _Section("Plots", plots, "plots"),
        *([_Section("Worst queries", _worst_section(saved, query, gallery, worst, top, options,
                                                    images_root), "worst"),
           _Section("Per-query values", _table_section(saved, paths, names), "queries")]
          if per_query else []),
        _Section("Options and inputs", _options_section(saved), "options"),
    ]
    nav = " · ".join(f"<a href='#{s.anchor}'>{_e(s.title)}</a>" for s in sections)
    html_of = [f"<section id='{s.anchor}'><h2>{_e(s.title)}</h2>{s.body}</section>"
               for s in sections]
    body = ("".join(html_of) if plots_wide else  # wide figures: the page's width, below
            f"<div class='top'>{html_of[0]}{html_of[1]}</div>" + "".join(html_of[2:]))
    source = f" · {_e(saved.path.name)}" if saved.path is not None else ""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(heading)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{_e(heading)}</h1><p class='note'>embeval {_e(__version__)} · "
            f"{_e(saved.command)} · {_e(saved.options.get('metric', ''))}{source}</p>"
            f"<nav>{nav}</nav></header><main>{body}</main><script>{_JS}</script></body></html>\n")


def write_report(path: str | os.PathLike[str], saved: SavedResult, **kwargs: Any) -> Path:
    """:func:`report_html` written to ``path`` (UTF-8, complete or absent)."""
    text = report_html(saved, **kwargs)
    p = Path(path)
    with atomic_path(p) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return p


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1b1f23;
background:#fafbfc}
header{background:#24292e;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header .note{color:#d1d5da}nav a{color:#9ecbff;margin-right:4px}
main{padding:8px 24px 40px}
.top{display:flex;flex-wrap:wrap;gap:0 32px;align-items:flex-start}
#metrics{flex:0 0 auto;max-width:470px}.top>#plots{flex:1 1 700px;min-width:0}
h2{border-bottom:1px solid #d1d5da;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #e1e4e8;padding:3px 8px;text-align:right}
th{background:#f6f8fa;font-weight:600}table.kv th,table.files th,table.metrics tbody th{text-align:left}
td.path{text-align:left;font-family:monospace;font-size:12px;word-break:break-all}
.hash{font-family:monospace;font-size:11px;color:#586069}
.note{color:#586069;font-size:13px}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px;
max-width:1100px}.plots figure{min-width:0}.plots figure.wide{grid-column:1/-1}
figure{margin:0;background:#fff;border:1px solid #e1e4e8;padding:6px}
figcaption{font-size:12px;color:#586069;text-align:center}
img.plot{width:100%;height:auto}figure.wide img.plot{max-width:1000px}
figure.ranked{border:none;padding:0;margin:0 0 6px}
table.per-query thead th{cursor:pointer;position:sticky;top:0;user-select:none}
table.per-query th[data-sorted=asc]::after{content:' \\25B2'}
table.per-query th[data-sorted=desc]::after{content:' \\25BC'}
table.per-query td:nth-child(3){text-align:left}
"""

_JS = """
(function(){
var el=document.getElementById('per-query-data');if(!el)return;
var d=JSON.parse(el.textContent),rows=d.rows,shown=0,table=document.getElementById('per-query');
var body=table.tBodies[0],info=document.getElementById('shown');
function render(n){n=Math.min(n,rows.length);var f=document.createDocumentFragment();
for(var i=shown;i<n;i++){var tr=document.createElement('tr'),r=rows[i];
for(var j=0;j<r.length;j++){var td=document.createElement('td'),v=r[j];
td.textContent=v===null?'n/a':(typeof v==='number'&&!Number.isInteger(v)?v.toFixed(4):String(v));
tr.appendChild(td);}f.appendChild(tr);}
body.appendChild(f);shown=n;info.textContent=shown+' of '+rows.length+' rows';}
function cmp(c,dir){return function(a,b){var x=a[c],y=b[c];
if(x===y)return a[0]-b[0];if(x===null)return 1;if(y===null)return -1;
var o=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));
return (o*dir)||(a[0]-b[0]);};}
var heads=table.tHead.rows[0].cells;
for(var h=0;h<heads.length;h++){heads[h].addEventListener('click',function(ev){
var th=ev.currentTarget,c=+th.getAttribute('data-col');
var dir=th.getAttribute('data-sorted')==='asc'?-1:1;
for(var k=0;k<heads.length;k++)heads[k].removeAttribute('data-sorted');
th.setAttribute('data-sorted',dir===1?'asc':'desc');rows.sort(cmp(c,dir));
var keep=Math.max(shown,d.page);body.textContent='';shown=0;render(keep);});}
document.getElementById('more').addEventListener('click',function(){render(shown+d.page);});
document.getElementById('all').addEventListener('click',function(){render(rows.length);});
render(d.page);
})();
"""
