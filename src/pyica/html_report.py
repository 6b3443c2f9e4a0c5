"""`pyica report`: one self-contained HTML page of score files or ``pyica eval`` results.

The page works offline: thumbnails (and ``--maps`` overlays) are small JPEGs embedded as ``data:``
URIs, the histogram and scatter plots are inline SVG, the filter and re-sort are a little inline
script whose hash is the only script the page's Content-Security-Policy allows, and the policy allows
no request at all (``default-src 'none'``). With the script off, the gallery is still shown, sorted.

Everything read from the files (paths, model names, error reasons, category names) is data: every
string is HTML-escaped, and no path decides where anything is written. The page is written as any
pyica output: atomically (:func:`~pyica.writers.replace_atomically`), an existing ``-o`` only with
``overwrite``, never over one of the inputs, never to a folder.

Cost: one pass over each input file; the rows (path and score) are held in memory; one decode per
embedded thumbnail (JPEGs reduced by libjpeg, see :func:`~pyica.loading.load_image`). Thumbnails go
to the ``max_images`` extremes of the ranking (half highest, half lowest), the listing to the
``max_rows`` extremes; the page says how many were left out. Imports no torch and no scipy.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from .writers import iter_scores, replace_atomically, text_safe

__all__ = ["build_report", "is_eval_results", "spearman"]

#: The first columns of a ``pyica eval`` results CSV (:data:`pyica.reports.RESULT_COLUMNS`, and the
#: legacy layout, begin with them). Kept here so that a report of score files imports no scipy.
EVAL_LEADING_COLUMNS = ("model", "dataset", "protocol", "split", "category", "n")
#: Scatter plots show at most this many points (an even subsample of the joined pairs); SRCC uses all.
MAX_SCATTER_POINTS = 4000
#: At most this many error rows are listed.
MAX_ERROR_ROWS = 1000
#: At most this many pairs of series get a scatter plot.
MAX_SCATTERS = 6


def _e(value: Any) -> str:
    """Any value as escaped HTML text (quotes too, so it is safe in attributes)."""
    return html.escape(text_safe(str(value)), quote=True)


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


# ---------------------------------------------------------------------------------------------------
# Reading the inputs


@dataclass
class Series:
    """The scores of one model in one file."""
    file: str
    model: str
    scores: dict[str, float] = field(default_factory=dict)  # path -> finite score, first row of a path kept
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    label: str = ""


def is_eval_results(header: Sequence[str] | None) -> bool:
    """Whether a CSV header is that of a ``pyica eval`` results file (by its leading columns)."""
    return bool(header) and tuple(h.strip() for h in header[:len(EVAL_LEADING_COLUMNS)]) == EVAL_LEADING_COLUMNS


def _csv_header(path: Path) -> list[str] | None:
    if path.suffix.lower() != ".csv":
        return None
    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), None)


def _read_scores(path: Path) -> list[Series]:
    by_model: dict[str, Series] = {}
    for row in iter_scores(path):
        model = str(row.get("model") or "?")
        series = by_model.setdefault(model, Series(str(path), model))
        item = str(row.get("path"))
        score, error = row.get("score"), row.get("error")
        if score is not None and not error:
            try:
                value = float(score)
            except (TypeError, ValueError):
                value = math.nan
            if math.isfinite(value):
                series.scores.setdefault(item, value)
                continue
            error = f"score {score!r} is not a finite number"
        series.errors.append((item, str(error or "no score")))
    return list(by_model.values())


def _read_eval(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    end = next((i for i, c in enumerate(header) if c in ("mapping", "fit")), len(header) - 1)
    columns = header[:end + 1] + [c for c in ("in_sample",) if c in header[end + 1:]]
    return columns, rows


def _check_output(output: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    if output.is_dir():
        raise ValueError(f"{output} is a folder: give a file name, e.g. {output / 'report.html'}")
    if os.path.lexists(output) and not output.is_file():
        raise ValueError(f"{output} is not a regular file: refusing to write the report to it")
    for source in inputs:
        if os.path.exists(output) and _same_file(source, output):
            raise ValueError(f"{output} is also an input of this report ({source}): choose another output")
    if output.exists() and not overwrite:
        raise ValueError(f"{output} exists: use --overwrite to replace it, or another -o")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


# ---------------------------------------------------------------------------------------------------
# Statistics (no scipy: the report stays light)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # ties share their mean rank
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get mean ranks); NaN for fewer than 2 pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} values, y {len(y)}")
    if len(x) < 2:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


# ---------------------------------------------------------------------------------------------------
# Pictures


def _thumbnail(path: str, size: int, bases: Sequence[Path]) -> str | None:
    """A ``data:`` URI of a JPEG thumbnail of the image at ``path`` (tried as given, then relative to
    each of ``bases``); ``None`` when it cannot be read."""
    from .loading import load_image

    candidates = [Path(path)] + ([base / path for base in bases] if not os.path.isabs(path) else [])
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            image = load_image(candidate, decode_size=(size, size))
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
        except Exception:  # noqa: BLE001 - any unreadable image becomes a placeholder
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return None


def _map_picture(maps: Path, path: str, size: int) -> str | None:
    """A ``data:`` URI of a thumbnail of the ``--maps`` overlay of ``path``, if there is one.

    The inputs root of the scoring run is not recorded, so the names :func:`~pyica.maps.map_paths` may
    have given are tried: the flat name (no root), then each folder above the image as the root. Only
    files inside ``maps`` (links resolved) are read.
    """
    from PIL import Image

    from .maps import map_paths

    image = Path(os.path.abspath(path))
    roots: list[Path | None] = [None, *image.parents]
    root = os.path.realpath(maps).rstrip(os.sep) + os.sep
    for candidate_root in roots:
        try:
            png, _ = map_paths(maps, image, candidate_root)
        except (OSError, ValueError):
            continue
        if not png.is_file() or not os.path.realpath(png).startswith(root):
            continue
        try:
            with Image.open(png) as picture:
                picture.draft("RGB", (size, size))
                picture = picture.convert("RGB")
                picture.thumbnail((size, size))
                buffer = io.BytesIO()
                picture.save(buffer, format="JPEG", quality=80)
        except Exception:  # noqa: BLE001
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return None


def _histogram_svg(values: Sequence[float], title: str, width: int = 420, height: int = 200) -> str:
    n = len(values)
    if not n:
        return f'<p class="note">{_e(title)}: no scores</p>'
    lo, hi = min(values), max(values)
    bins = max(5, min(40, int(math.sqrt(n)) + 1))
    span = hi - lo or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / span * bins))] += 1
    top = max(counts)
    left, plot_w, plot_h = 40, width - 50, height - 50
    bar_w = plot_w / bins
    bars = []
    for i, c in enumerate(counts):
        h = plot_h * c / top
        x0 = lo + span * i / bins
        bars.append(f'<rect x="{left + i * bar_w:.1f}" y="{10 + plot_h - h:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                    f'height="{h:.1f}"><title>{_num(x0)} to {_num(x0 + span / bins)}: {c}</title></rect>')
    return (f'<figure><svg class="hist" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<title>{_e(title)}</title>{"".join(bars)}'
            f'<line x1="{left}" y1="{10 + plot_h}" x2="{left + plot_w}" y2="{10 + plot_h}" class="axis"/>'
            f'<text x="{left}" y="{height - 8}">{_num(lo)}</text>'
            f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">{_num(hi)}</text>'
            f'<text x="{left - 4}" y="18" text-anchor="end">{top}</text></svg>'
            f'<figcaption>{_e(title)} (n = {n})</figcaption></figure>')


def _scatter_svg(a: Series, b: Series, width: int = 360, height: int = 320) -> str:
    common = [p for p in a.scores if p in b.scores]
    xs = [a.scores[p] for p in common]
    ys = [b.scores[p] for p in common]
    rho = spearman(xs, ys)
    caption = f"{_e(b.label)} against {_e(a.label)}: n = {len(common)}, SRCC = {_num(rho, '.3f')}"
    if not common:
        return f'<p class="note scatter-empty">{_e(b.label)} and {_e(a.label)} share no scored path</p>'
    step = max(1, math.ceil(len(common) / MAX_SCATTER_POINTS))
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    left, plot_w, plot_h = 40, width - 50, height - 50
    sx = plot_w / ((x1 - x0) or 1.0)
    sy = plot_h / ((y1 - y0) or 1.0)
    dots = "".join(f'<circle cx="{left + (x - x0) * sx:.1f}" cy="{10 + plot_h - (y - y0) * sy:.1f}" r="2"/>'
                   for x, y in zip(xs[::step], ys[::step]))
    shown = "" if step == 1 else f" ({len(xs[::step])} points drawn)"
    return (f'<figure class="scatter" data-srcc="{_num(rho, ".6f")}"><svg role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><title>{caption}</title>'
            f'<rect x="{left}" y="10" width="{plot_w}" height="{plot_h}" class="frame"/>{dots}'
            f'<text x="{left}" y="{height - 8}">{_num(x0)}</text>'
            f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">{_num(x1)}</text>'
            f'<text x="{left - 4}" y="{10 + plot_h}" text-anchor="end">{_num(y0)}</text>'
            f'<text x="{left - 4}" y="20" text-anchor="end">{_num(y1)}</text></svg>'
            f'<figcaption>{caption}{shown}</figcaption></figure>')


# ---------------------------------------------------------------------------------------------------
# The page


_SCRIPT = """
(function () {
  var gallery = document.getElementById('gallery');
  if (!gallery) { return; }
  var controls = document.getElementById('controls');
  controls.hidden = false;
  var filter = document.getElementById('filter'), order = document.getElementById('order');
  var cards = Array.prototype.slice.call(gallery.children);
  function apply() {
    var text = filter.value.toLowerCase(), sign = order.value === 'asc' ? 1 : -1;
    cards.sort(function (a, b) {
      return sign * (parseFloat(a.getAttribute('data-score')) - parseFloat(b.getAttribute('data-score')));
    });
    cards.forEach(function (card) {
      card.hidden = text !== '' && card.getAttribute('data-path').toLowerCase().indexOf(text) < 0;
      gallery.appendChild(card);
    });
  }
  filter.addEventListener('input', apply);
  order.addEventListener('change', apply);
})();
"""

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.note{color:#555} table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:2px 6px}
td.num{text-align:right;font-variant-numeric:tabular-nums} figure{display:inline-block;margin:.5em 1em .5em 0}
svg rect{fill:#4a78b5} svg rect.frame{fill:none;stroke:#bbb} svg circle{fill:#c0392b;fill-opacity:.5}
svg text{font-size:11px;fill:#333} svg .axis{stroke:#555}
#gallery{display:flex;flex-wrap:wrap;gap:8px;padding:0;list-style:none}
#gallery li{width:170px;border:1px solid #ddd;padding:4px;font-size:12px;word-break:break-all}
#gallery li.nothumb{width:auto;max-width:340px} #gallery li[hidden]{display:none}
.score{font-weight:bold;font-size:13px} .ph{width:160px;height:90px;background:#eee;color:#777;
display:flex;align-items:center;justify-content:center} img{display:block;max-width:160px}
.others{color:#555}
"""


def _extremes(count: int, keep: int) -> set[int]:
    """Positions kept of ``count`` ranked items: all, or the ``keep`` at the two ends (half each)."""
    if count <= keep:
        return set(range(count))
    high = (keep + 1) // 2
    return set(range(high)) | set(range(count - (keep - high), count))


def _gallery(primary: Series, others: list[Series], *, order: str, max_images: int, max_rows: int, thumb: int,
             maps: Path | None, bases: Sequence[Path]) -> tuple[str, dict[str, int]]:
    ranked = sorted(primary.scores.items(), key=lambda item: (-item[1], item[0]))
    if order == "asc":
        ranked.reverse()
    listed = _extremes(len(ranked), max_rows)
    with_thumbs = _extremes(len(ranked), max_images)
    stats = {"listed": len(listed), "thumbnails": 0, "placeholders": 0, "maps": 0}
    cards = []
    for position, (path, score) in enumerate(ranked):
        if position not in listed:
            continue
        extra = "".join(f'<br><span class="others">{_e(s.label)}: {_num(s.scores[path])}</span>'
                        for s in others if path in s.scores)
        picture, css = "", "nothumb"
        if position in with_thumbs:
            css = ""
            uri = _thumbnail(path, thumb, bases)
            if uri is None:
                picture = '<div class="ph">image not readable</div>'
                stats["placeholders"] += 1
            else:
                picture = f'<img class="thumb" alt="{_e(path)}" src="{uri}">'
                stats["thumbnails"] += 1
            if maps is not None:
                overlay = _map_picture(maps, path, thumb)
                if overlay is not None:
                    picture += f'<img class="map" alt="map of {_e(path)}" src="{overlay}">'
                    stats["maps"] += 1
        cards.append(f'<li class="{css}" data-score="{score!r}" data-path="{_e(path)}">{picture}'
                     f'<span class="score">{_num(score)}</span> <span class="path">{_e(path)}</span>{extra}</li>')
    notes = []
    if len(ranked) > max_images:
        notes.append(f"Thumbnails for the {min(max_images, len(ranked))} images at the two ends of the ranking "
                     f"(the {(max_images + 1) // 2} highest and {max_images // 2} lowest scored, --max-images "
                     f"{max_images}); the other {len(listed) - len(with_thumbs & listed)} listed images have none.")
    if len(ranked) > max_rows:
        notes.append(f"{len(ranked) - len(listed)} of {len(ranked)} scored images are not listed (--max-rows "
                     f"{max_rows}: the highest and lowest scored are).")
    head = (f'<h2>Gallery: {_e(primary.label)}, sorted by score, {"highest" if order == "desc" else "lowest"} '
            f'first</h2>')
    note = "".join(f'<p class="note cap">{_e(n)}</p>' for n in notes)
    controls = (f'<p id="controls" hidden><label>Filter paths <input id="filter" type="search"></label> '
                f'<label>Order <select id="order"><option value="desc"{" selected" if order == "desc" else ""}>'
                f'highest first</option><option value="asc"{" selected" if order == "asc" else ""}>lowest first'
                f'</option></select></label></p>')
    return head + note + controls + f'<ul id="gallery">{"".join(cards)}</ul>', stats


def _errors_html(series: list[Series]) -> tuple[str, int]:
    rows = [(s, path, reason) for s in series for path, reason in s.errors]
    if not rows:
        return "", 0
    shown = rows[:MAX_ERROR_ROWS]
    body = "".join(f'<tr class="error-row"><td>{_e(s.label)}</td><td>{_e(p)}</td><td>{_e(r)}</td></tr>'
                   for s, p, r in shown)
    more = f'<p class="note">{len(rows) - len(shown)} more error rows not listed.</p>' if len(rows) > len(shown) else ""
    return (f'<h2>Errors ({len(rows)})</h2><table id="errors"><tr><th>scores</th><th>path</th><th>reason</th></tr>'
            f'{body}</table>{more}'), len(rows)


def _cell(value: str) -> tuple[str, bool]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _e(value if value is not None else ""), False
    if value.strip().lstrip("-").isdigit():
        return _e(value.strip()), True
    return _e(_num(number, ".3f") if math.isfinite(number) else value), True


def _eval_html(path: Path, columns: list[str], rows: list[dict[str, str]]) -> str:
    def table(members: list[dict[str, str]], css: str) -> str:
        head = "".join(f"<th>{_e(c)}</th>" for c in columns)
        body = []
        for row in members:
            cells = []
            for c in columns:
                text, numeric = _cell(row.get(c) or "")
                cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        return f'<table class="{css}"><tr>{head}</tr>{"".join(body)}</table>'

    main = [r for r in rows if r.get("category") in ("pooled", "category_mean")]
    per_category = [r for r in rows if r.get("category") not in ("pooled", "category_mean")]
    out = f'<h2>Evaluation results: {_e(path.name)} ({len(rows)} rows)</h2>' + table(main, "metrics")
    if per_category:
        out += f"<h3>Per category ({len(per_category)} rows)</h3>" + table(per_category, "metrics per-category")
    return out


def build_report(inputs: Iterable[str | os.PathLike], output: str | os.PathLike, *, maps: str | os.PathLike | None = None,
                 max_images: int = 500, max_rows: int = 10000, thumb_size: int = 160, order: str = "desc",
                 overwrite: bool = False, title: str | None = None) -> dict[str, Any]:
    """Write the HTML report of score files and/or eval results CSVs ``inputs`` to ``output``.

    Returns counts: series, scored, errors, thumbnails, placeholders, maps, listed, eval_files.
    Raises ``ValueError`` (one line) for a refused output, a missing input or an unreadable file.
    """
    inputs = [Path(p) for p in inputs]
    output = Path(output)
    maps = Path(maps) if maps is not None else None
    if not inputs:
        raise ValueError("report needs at least one score file or results CSV")
    if order not in ("desc", "asc"):
        raise ValueError(f"order must be 'desc' or 'asc', not {order!r}")
    if max_images < 0 or max_rows < 1 or thumb_size < 16:
        raise ValueError("max_images must be >= 0, max_rows >= 1 and thumb_size >= 16")
    for source in inputs:
        if not source.is_file():
            raise ValueError(f"{source}: not found (or not a file)")
    if maps is not None and not maps.is_dir():
        raise ValueError(f"--maps {maps}: not a folder")
    _check_output(output, inputs, overwrite)

    series: list[Series] = []
    evals: list[tuple[Path, list[str], list[dict[str, str]]]] = []
    for source in inputs:
        if is_eval_results(_csv_header(source)):
            evals.append((source, *_read_eval(source)))
        else:
            series.extend(_read_scores(source))
    models = [s.model for s in series]
    for s in series:
        s.label = s.model if models.count(s.model) == 1 else f"{s.model} ({Path(s.file).name})"
    labels = [s.label for s in series]
    for s in series:  # the same model in two files of the same name: number them
        if labels.count(s.label) > 1:
            s.label = f"{s.label} #{labels[:series.index(s) + 1].count(s.label)}"

    parts: list[str] = []
    stats: dict[str, Any] = {"series": len(series), "scored": sum(len(s.scores) for s in series),
                             "thumbnails": 0, "placeholders": 0, "maps": 0, "listed": 0, "eval_files": len(evals)}
    summary_rows = "".join(
        f"<tr><td>{_e(s.label)}</td><td>{_e(s.file)}</td><td class='num'>{len(s.scores)}</td>"
        f"<td class='num'>{len(s.errors)}</td>"
        f"<td class='num'>{_num(sum(s.scores.values()) / len(s.scores) if s.scores else None)}</td>"
        f"<td class='num'>{_num(min(s.scores.values(), default=None))}</td>"
        f"<td class='num'>{_num(max(s.scores.values(), default=None))}</td></tr>" for s in series)
    if series:
        parts.append("<h2>Score files</h2><table id='summary'><tr><th>scores</th><th>file</th><th>scored</th>"
                     f"<th>errors</th><th>mean</th><th>min</th><th>max</th></tr>{summary_rows}</table>")
        parts.append("<h2>Histogram</h2>" + "".join(_histogram_svg(list(s.scores.values()), s.label) for s in series))
        if len(series) > 1:
            pairs = [(series[0], other) for other in series[1:]][:MAX_SCATTERS]
            parts.append("<h2>Agreement</h2>" + "".join(_scatter_svg(a, b) for a, b in pairs))
    for source, columns, rows in evals:
        parts.append(_eval_html(source, columns, rows))
    if series:
        errors_html, stats["errors"] = _errors_html(series)
        bases = sorted({Path(s.file).resolve().parent for s in series})
        gallery, counts = _gallery(series[0], series[1:], order=order, max_images=max_images, max_rows=max_rows,
                                   thumb=thumb_size, maps=maps, bases=bases)
        stats.update(counts)
        parts.append(gallery)
        parts.append(errors_html)
    else:
        stats["errors"] = 0

    from .version import __version__

    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; "
           "base-uri 'none'; form-action 'none'")
    heading = title or "pyica report: " + ", ".join(p.name for p in inputs)
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(heading)}</title><style>{_STYLE}</style></head><body>'
            f'<h1>{_e(heading)}</h1><p class="note">Made by pyica {_e(__version__)} on {_e(made)} from '
            f'{", ".join(_e(p) for p in inputs)}{f"; maps from {_e(maps)}" if maps is not None else ""}.</p>'
            + "".join(parts) + f"<script>{_SCRIPT}</script></body></html>\n")
    replace_atomically(output, lambda temp: Path(temp).write_text(page, encoding="utf-8"), suffix=".html")
    return stats
