"""Working with finished score files: merge the parts of a split run, summarise one.

``pyica merge`` joins the files that ``--shard I/N`` runs or ``torchrun`` ranks wrote (each scored every
k-th input) into one output, in the original input order when every part's sidecar says which
positions it holds, and refuses parts written by different models or weights, unfinished parts and
parts that overlap. ``pyica summary`` prints what a score file holds: counts, mean, quantiles, the
most and least complex images.
"""

from __future__ import annotations

import heapq
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from .scoring import ScoreRecord
from .writers import ScoreWriter, iter_scores

__all__ = ["merge_score_files", "summarize_scores", "format_summary"]

#: Identity fields that must agree between the parts of one merged output.
_SAME_IN_EVERY_PART = ("model", "weights_sha256", "precision")


def _sidecar(part: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(part.with_name(part.name + ".meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _check_parts(parts: list[Path]) -> list[dict[str, Any] | None]:
    """The parts' sidecars; refuses a missing or unfinished part and parts of different identities."""
    if not parts:
        raise ValueError("merge needs at least one score file")
    metas = []
    for part in parts:
        if not part.is_file():
            unfinished = part.with_name(part.name + ".part")
            hint = f" ({unfinished.name} exists: finish it with pyica score ... --resume first)" if unfinished.exists() else ""
            raise FileNotFoundError(f"{part}: score file not found{hint}")
        meta = _sidecar(part)
        if meta is not None and meta.get("status") == "running":
            raise ValueError(f"{part}: its run has not finished (sidecar status 'running'): resume it first")
        metas.append(meta)
    known = [(part, (meta or {}).get("identity") or {}) for part, meta in zip(parts, metas)]
    for key in _SAME_IN_EVERY_PART:
        values = {ident.get(key) for _, ident in known if key in ident}
        if len(values) > 1:
            detail = ", ".join(f"{part.name}: {ident.get(key)!r}" for part, ident in known if key in ident)
            raise ValueError(f"the parts were written with different {key} ({detail}): refusing to merge them")
    return metas


def _positions(meta: dict[str, Any] | None) -> tuple[int, int] | None:
    """``(first position, stride)`` of a part's rows in the input order, from its sidecar; ``None`` if unknown."""
    if not meta:
        return None
    shard = meta.get("shard") or "0/1"
    try:
        index, count = (int(x) for x in str(shard).split("/"))
        rank, world = int(meta.get("rank", 0)), int(meta.get("world_size", 1))
    except (TypeError, ValueError):
        return None
    if meta.get("skipped_already_done"):
        return None  # a resumed run may have rows of another input order before its own
    return index + count * rank, count * world


def _ordered_rows(parts: list[Path], metas: list[dict[str, Any] | None]) -> tuple[Iterator[dict[str, Any]], bool]:
    """All rows, streamed: in input order when every part's positions are known and distinct, else part by part."""
    spans = [_positions(meta) for meta in metas]
    strides = {span[1] for span in spans if span}
    firsts = [span[0] for span in spans if span]
    if all(spans) and len(strides) == 1 and len(set(firsts)) == len(firsts):
        def numbered(part: Path, first: int, stride: int):
            for k, row in enumerate(iter_scores(part)):
                yield first + k * stride, row

        streams = [numbered(part, *span) for part, span in zip(parts, spans)]
        return (row for _, row in heapq.merge(*streams, key=lambda item: item[0])), True
    return (row for part in parts for row in iter_scores(part)), False


def merge_score_files(parts: Iterable[str | os.PathLike], output: str | os.PathLike, *, fmt: str | None = None,
                      overwrite: bool = False) -> dict[str, Any]:
    """Merge score files into ``output`` (the output rules of :class:`~pyica.writers.OutputFile`).

    Returns a summary: rows, parts, whether the input order was restored. A path found in two parts
    is refused: the runs overlapped, so one of their scores would be dropped silently.
    """
    parts = [Path(p) for p in parts]
    metas = _check_parts(parts)
    identity = next(((meta or {}).get("identity") for meta in metas if meta and meta.get("identity")), None) or {}
    identity = {k: v for k, v in identity.items() if k in _SAME_IN_EVERY_PART}
    rows, in_order = _ordered_rows(parts, metas)
    writer = ScoreWriter(output, fmt, overwrite=overwrite, identity=identity, reads=parts)
    seen: set[str] = set()
    models: set[str] = set()
    errors = 0
    finished = False
    try:
        batch: list[ScoreRecord] = []
        for row in rows:
            path = str(row["path"])
            if path in seen:
                raise ValueError(f"{path} is in more than one part: the runs overlapped; refusing to merge")
            seen.add(path)
            models.add(str(row.get("model")))
            if len(models) > 1:
                raise ValueError(f"the parts hold rows of several models ({', '.join(sorted(models))}): "
                                 "refusing to merge them")
            errors += bool(row.get("error"))
            batch.append(ScoreRecord(path, str(row.get("model")), row.get("score"), row.get("error") or None))
            if len(batch) >= 4096:
                writer.write(batch)
                batch = []
        writer.write(batch)
        summary = {"rows": len(seen), "errors": errors, "parts": [str(p) for p in parts], "input_order": in_order,
                   "model": next(iter(models), None)}
        writer.close(finished=True, meta={"merged": summary})
        finished = True
    finally:
        if not finished:  # a merge is derived data: a failed one leaves nothing behind
            writer.close(finished=False, discard=True)
    return summary


def summarize_scores(path: str | os.PathLike, top: int = 5) -> dict[str, Any]:
    """Counts, mean, std, quantiles and the ``top`` highest and lowest scored paths of a score file."""
    import numpy as np

    scores: list[float] = []
    highest: list[tuple[float, str]] = []
    lowest: list[tuple[float, str]] = []
    rows = errors = 0
    models: set[str] = set()
    for row in iter_scores(path):
        rows += 1
        models.add(str(row.get("model")))
        score = row.get("score")
        if score is None or not math.isfinite(float(score)):
            errors += 1
            continue
        score = float(score)
        scores.append(score)
        item = (score, str(row["path"]))
        if top > 0:
            (heapq.heappush if len(highest) < top else heapq.heappushpop)(highest, item)
            (heapq.heappush if len(lowest) < top else heapq.heappushpop)(lowest, (-score, item[1]))
    values = np.asarray(scores, dtype=np.float64)
    quantiles = {}
    if values.size:
        for q in (0.05, 0.25, 0.5, 0.75, 0.95):
            quantiles[f"q{int(q * 100):02d}"] = float(np.quantile(values, q))
    return {
        "file": str(path),
        "models": sorted(models),
        "rows": rows,
        "scored": int(values.size),
        "errors": errors,
        "mean": float(values.mean()) if values.size else None,
        "std": float(values.std(ddof=1)) if values.size > 1 else None,
        "min": float(values.min()) if values.size else None,
        **quantiles,
        "max": float(values.max()) if values.size else None,
        "highest": [{"path": p, "score": s} for s, p in sorted(highest, reverse=True)],
        "lowest": [{"path": p, "score": -s} for s, p in sorted(lowest, reverse=True)],
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a short text for a terminal."""
    def num(value) -> str:
        return "-" if value is None else f"{value:.4g}"

    lines = [f"{summary['file']}: {summary['rows']} rows, {summary['scored']} scored, {summary['errors']} errors "
             f"(model {', '.join(summary['models']) or '-'})"]
    if summary["scored"]:
        stats = ["mean", "std", "min", "q05", "q25", "q50", "q75", "q95", "max"]
        lines.append("  ".join(f"{name} {num(summary.get(name))}" for name in stats))
    for title, key in (("most complex", "highest"), ("least complex", "lowest")):
        if summary[key]:
            lines.append(f"{title}:")
            lines.extend(f"  {item['score']:.4g}  {item['path']}" for item in summary[key])
    return "\n".join(lines)
