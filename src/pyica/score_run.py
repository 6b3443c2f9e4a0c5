"""What every ``pyica score`` engine (local, Ray) records and reports at the end of a run.

One sidecar layout (:func:`score_run_meta`), one set of closing lines and one exit rule
(:func:`score_run_outcome`), so that ``--engine ray`` cannot drift from the local engine. The exit
codes are the command's (docs/troubleshooting.md).
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_BROKEN_PIPE", "score_run_meta",
           "score_run_outcome"]

log = logging.getLogger("pyica")

EXIT_OK, EXIT_SOME_FAILED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141


def score_run_meta(args, *, trained, writer, counts, n_scored: int, n_errors: int, seconds: float,
                scoring_seconds: float, started) -> dict:
    """The sidecar fields every ``pyica score`` engine records (the caller adds its environment)."""
    from .registry import model_info
    from .writers import text_safe

    processed = n_scored + n_errors
    return {
        "command": " ".join(["pyica", *map(text_safe, args.argv)]),
        "model": args.model,
        "model_info": model_info(args.model) if not trained else {
            "name": args.model, "kind": "learned", "description": trained.get("description"),
            "score_range": (trained.get("score") or {}).get("range"), "weights": str(args.weights), "card": trained},
        # the weights actually loaded, not only the registry's card
        "weights": {"path": str(args.weights) if args.weights else "shipped with pyica",
                    "sha256": writer.output.identity.get("weights_sha256") if writer.output else None},
        "precision": args.precision,
        "batch_size": args.batch_size,
        "shard": f"{args.shard[0]}/{args.shard[1]}" if args.shard else None,
        "inputs": counts["inputs"],
        "repeated_inputs_scored_once": counts["repeated"],
        "skipped_already_done": counts["skipped"],
        "scored": n_scored,
        "errors": n_errors,
        "seconds_total": round(seconds, 3),
        "seconds_scoring": round(scoring_seconds, 3),
        "images_per_second": round(processed / scoring_seconds, 3) if scoring_seconds > 0 and processed else None,
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def score_run_outcome(args, writer, meta: dict, first_error: str | None, *, detail: str = "",
                   more: tuple[str, ...] = ()) -> int:
    """The closing lines of a ``pyica score`` run (summary, failures, earlier error rows) and its exit code."""
    from .writers import text_safe

    n_scored, n_errors, skipped = meta["scored"], meta["errors"], meta["skipped_already_done"]
    if meta["repeated_inputs_scored_once"]:
        log.warning("%d inputs were named more than once; each was scored once", meta["repeated_inputs_scored_once"])
    if not args.quiet:
        rate = f", {meta['images_per_second']:.1f} images/s" if meta["images_per_second"] else ""
        print(f"pyica: {n_scored} scored, {n_errors} errors, {skipped} already done, {meta['seconds_total']:.1f} s"
              f"{rate}{detail}" + (f" -> {args.output}" if args.output else ""), file=sys.stderr)
        for line in more:
            print(line, file=sys.stderr)
    if n_errors:
        where = f"the error column of {args.output}" if args.output else "the error column of the output"
        print(f"pyica: {n_errors} of {n_scored + n_errors} inputs failed (first: {text_safe(first_error)}); "
              f"see {where}", file=sys.stderr)
    if meta["inputs"] == 0:
        print("pyica: error: no images found in the inputs", file=sys.stderr)
        return EXIT_FAILED
    if n_scored == 0 and skipped == 0:
        return EXIT_FAILED
    if writer.done_errors and not n_errors:  # the exit code speaks for the whole output, not only this run
        print(f"pyica: {writer.done_errors} error rows from earlier runs stay in {args.output} (not retried)",
              file=sys.stderr)
    return EXIT_SOME_FAILED if n_errors or writer.done_errors else EXIT_OK
