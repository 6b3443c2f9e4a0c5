"""The ``pyica`` command: list, info, score, eval, validate-data.

Data goes to stdout or the named output files; progress and log messages go to stderr.

Exit codes (docs/troubleshooting.md): 0 every input was scored (or the command succeeded); 1 some inputs
failed, with an error row for each (``score``; also ``train --verify`` that does not reproduce and
``validate-data`` that finds problems); 2 nothing was done: a usage error, a refusal (an output that
exists or is locked, bad weights or config), or a run that scored no image; 130 interrupted; 141 the
reader of stdout went away (``pyica score ... | head``). A problem is one line on stderr; ``-v`` adds
the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .score_run import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, score_run_meta, score_run_outcome

log = logging.getLogger("pyica")


def _count(minimum: int):
    """An argparse type: a whole number >= ``minimum`` (a bad value is a usage error, not a traceback)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return parse


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .registry import DEFAULT_MODEL

    p.add_argument("-m", "--model", default=DEFAULT_MODEL,
                   help=f"registered model name (see `pyica list`; default: {DEFAULT_MODEL})")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="trained weights for a model that ships none (CM-SSA: the .safetensors that "
                        "`pyica train` wrote; its .json card must lie beside it)")
    p.add_argument("--allow-unverified-weights", action="store_true",
                   help="load weights whose card records no sha256. RISK: nothing then shows that the file is "
                        "the one the card describes; a damaged, truncated or swapped file can load and score "
                        "wrongly without an error. Use only for weights you made or checked yourself")
    p.add_argument("--device", default="auto",
                   help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps' (default: auto)")
    p.add_argument("--batch-size", type=_count(1), default=32, help="images per forward pass (default: 32)")
    p.add_argument("--workers", type=_count(0), default=None,
                   help="DataLoader worker processes that decode and preprocess images "
                        "(default: one per spare CPU core, at most 8, none when the inputs fit in one batch; "
                        "0 = load in the main process)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast precision for learned models on GPU (default: fp32)")
    p.add_argument("--max-pixels", type=_count(1), default=None,
                   help="reject images whose header announces more pixels than this, before decoding "
                        "(decompression-bomb guard; default 100,000,000 or $PYICA_MAX_PIXELS)")


def _build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(
        prog="pyica",
        description="Image complexity assessment: score images, evaluate predictions against human scores.",
    )
    parser.add_argument("--version", action="version", version=f"pyica {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'compression*'")
    p.add_argument("--kind", choices=("classic", "learned"), help="only models of this kind")
    p.add_argument("--json", action="store_true", help="print JSON (name, kind, description) instead of a table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="show what a model is: kind, score range and direction, reference, card")
    p.add_argument("name", help="registered model name")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "score",
        help="score image files, folders (recursively), CSV manifests or archives (.tar, .tar.gz, .zip)",
        description="Scores every input image and writes one row per image: path (absolute), model, score, "
                    "error. Unreadable files get an error row and the run continues; exit code 0 when every "
                    "input was scored, 1 when some failed, 2 when nothing was (docs/troubleshooting.md). Inputs are streamed, so memory "
                    "does not grow with their number. With -o, rows are written to OUT.part while running, "
                    "renamed to OUT at the end, and a metadata sidecar OUT.meta.json records versions, "
                    "device, counts and speed. Under torchrun (WORLD_SIZE > 1) every rank scores its share "
                    "of the inputs on cuda:LOCAL_RANK (when CUDA is available) into its own file, OUT with "
                    ".rank{RANK}of{WORLD_SIZE} inserted before the extension (scores.csv -> "
                    "scores.rank0of4.csv); no process group is used.",
    )
    p.add_argument("inputs", nargs="+",
                   help="image files, folders, .csv manifests with an 'image'/'path' column, or archives: "
                        "WebDataset-style .tar shards, .tar.gz/.tgz, .zip (members named ARCHIVE:MEMBER in the "
                        "output); brace patterns such as 'shards/x-{000..009}.tar' are expanded")
    _add_model_args(p)
    p.add_argument("-o", "--output", help="output file (.csv or .jsonl); default: CSV to stdout")
    p.add_argument("--format", choices=("csv", "tsv", "jsonl", "parquet"),
                   help="output format (default: from the extension: .csv, .tsv, .jsonl/.ndjson, .parquet; "
                        "CSV for stdout; an unknown extension is refused)")
    p.add_argument("--resume", action="store_true",
                   help="continue an earlier run into the same output, skipping inputs it already has (refused "
                        "if that run used another model, weights, precision or format)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output file (when this run finishes; until then it stays as it was)")
    p.add_argument("--wait", action="store_true",
                   help="if another run is writing the same output, wait for it instead of refusing")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="do not descend into sub-folders")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")

    def shard_arg(text: str) -> tuple[int, int]:
        from .scoring import parse_shard

        try:
            return parse_shard(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    p.add_argument("--shard", type=shard_arg, default=None, metavar="I/N",
                   help="score only the inputs at positions p (0-based, in input order) with p %% N == I, "
                        "so that N runs with I = 0..N-1 cover every input exactly once; give each its own -o. "
                        "Under torchrun the shard is split again by rank: rank r of w takes p %% (N*w) == I + N*r")
    p.add_argument("--maps", metavar="DIR",
                   help="also write a complexity map per image: DIR/<name>.map.png (overlay, colour bar, the "
                        "image's score) and DIR/<name>.map.npy (patch-score grid); <name> is x for x.jpg, or x.jpg "
                        "when another image in its folder is x.*; folders under the inputs' common folder are "
                        "mirrored under DIR; nothing is written outside DIR or over a file pyica did not write")
    p.add_argument("--map-patch", type=float, default=0.25,
                   help="map patch side as a fraction of the image's shorter side (default: 0.25)")
    p.add_argument("--map-stride", type=float, default=0.5,
                   help="map patch stride as a fraction of the patch side (default: 0.5)")
    p.add_argument("--map-scale", choices=("fixed", "per-image"), default="fixed",
                   help="map colours: 'fixed' (default) on the model's score range, the same in every map (a "
                        "model with an open range is scaled per image, with a warning); 'per-image': each map's "
                        "own min..max")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="'local' (default): this process and its DataLoader workers; 'ray': a Ray Data actor pool "
                        "on the cluster of RAY_ADDRESS, else a local Ray (pip install 'pyica[ray]'; docs/ray.md)")
    p.add_argument("--num-cpus", type=_count(1), default=None,
                   help="--engine ray: CPU actors (one model each; default: every CPU of the cluster); a local Ray "
                        "gets this many CPUs")
    p.add_argument("--num-gpus", type=_count(0), default=None,
                   help="--engine ray: GPU actors, one GPU each (default: none, the CPU)")
    # -m: default the default model, or, with --weights of a trained model, the model its card describes
    p.set_defaults(func=cmd_score, model=None)

    p = sub.add_parser(
        "tiles",
        help="crop the most complex square tiles of each image (lossless PNG) and write a manifest",
        description="Cuts every image into SIZE x SIZE tiles every STRIDE px (the last row and column flush with "
                    "the border; an image smaller than a tile gets an error row), scores each tile with the model "
                    "as if it were a whole image, keeps the --top K best (and/or those scoring at least "
                    "--min-score) after dropping tiles that overlap a better one by IoU > --nms, and writes "
                    "them as PNG crops under --to (folders of the inputs mirrored; never outside it, never over "
                    "an existing file) plus a manifest, one row per tile: path (source), tile, x, y, w, h, score, "
                    "rank, kept, model, error. The originals are only read. Exit codes as for score "
                    "(docs/tiles.md).",
    )
    p.add_argument("inputs", nargs="+", help="image files, folders, .csv manifests or archives, as for `pyica score`")
    _add_model_args(p)
    p.add_argument("--size", type=_count(1), default=512, help="tile side in pixels (default: 512)")
    p.add_argument("--stride", type=_count(1), default=None, help="tile step in pixels (default: --size, no overlap)")
    p.add_argument("--top", type=_count(1), default=None, metavar="K", help="keep at most K tiles per image")
    p.add_argument("--min-score", type=float, default=None, metavar="X", help="keep only tiles scoring at least X")
    p.add_argument("--nms", type=float, default=None, metavar="IOU",
                   help="drop a tile whose overlap (IoU) with a better kept tile exceeds IOU (default: 0.3; "
                        "1 keeps every tile)")
    p.add_argument("--to", required=True, metavar="DIR", help="folder for the crops (created if missing)")
    p.add_argument("-o", "--output", help="manifest file (.csv, .tsv, .jsonl, .parquet; default: DIR/tiles.csv)")
    p.add_argument("--format", choices=("csv", "tsv", "jsonl", "parquet"), help="manifest format (default: from -o)")
    p.add_argument("--resume", action="store_true",
                   help="continue an earlier run into the same manifest, skipping images it already has (refused "
                        "if that run used other settings)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing manifest when this run finishes (crops are never replaced)")
    p.add_argument("--wait", action="store_true", help="wait for another run writing the same manifest")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="do not descend into sub-folders")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_tiles)

    p = sub.add_parser(
        "eval",
        help="metrics of a predictions file against a manifest, or of a model on a dataset under a protocol",
        description="Two modes. (1) --pred FILE with --dataset: join predictions to human scores by path "
                    "and compute metrics. (2) -m MODEL with --dataset: run the model under --protocol "
                    "and report metrics per split. Prints a table; -o writes a tidy results CSV "
                    "(one row per split and category, one metric per column); --plot writes a scatter PNG. "
                    "Under --protocol all a model scores with its weights as loaded (a shipped head is not "
                    "refit); random, loco and official refit a trainable model's head on each training part. "
                    "Scores of weights trained on the evaluated dataset are marked in-sample (a note above "
                    "the table, the in_sample column). Errors (rmse_logistic4, ...) are in the label's units "
                    "after a 4-parameter logistic fitted on the evaluated predictions (per category on "
                    "per-category scales such as SAVOIAS).",
    )
    p.add_argument("--pred", help="predictions file written by `pyica score` (CSV or JSONL)")
    p.add_argument("--dataset", required=True,
                   help="dataset name (savoias, ic9600, visc-c) with --root, or a manifest CSV / folder path")
    p.add_argument("--root", help="dataset folder for named datasets")
    _add_model_args(p)
    p.add_argument("--protocol", choices=("all", "official", "random", "loco"), default="all",
                   help="all: the whole dataset as test set; official: the dataset's own train/test split; "
                        "random: --splits seeded random train:test splits (stratified by category, duplicate "
                        "groups kept together); loco: leave one category out (default: all)")
    p.add_argument("--splits", type=int, default=10, help="number of random splits (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first random split (default: 0)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="test part of random splits (default: 0.2)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="validation part carved from each training part, for models that are trained (default: 0.1)")
    p.add_argument("--test-dataset",
                   help="cross-dataset protocol: train (when the model trains) on --dataset, test on this dataset")
    p.add_argument("--test-root", help="folder of --test-dataset")
    p.add_argument("--fit", choices=("none", "logistic4"), default="none",
                   help="draw the fitted 4-parameter logistic on --plot (its PLCC then after the mapping); the "
                        "results always hold SRCC/PLCC/KRCC on raw predictions and PLCC and the errors after "
                        "that logistic, in the label's units (*_logistic4 columns)")
    p.add_argument("-o", "--output",
                   help="tidy results CSV to write (appends rows to an existing pyica results CSV; any other "
                        "existing file is refused without --overwrite; never a file eval reads)")
    p.add_argument("--plot", help="scatter plot PNG of predictions vs human scores (test parts, first split)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing -o (instead of appending) or --plot file that is not one eval wrote")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    # -m: with --pred it selects that model's rows (default: the file's only model); else the model to run
    p.set_defaults(func=cmd_eval, model=None)

    p = sub.add_parser(
        "train",
        help="train a model from a config (default-model heads, CM-SSA, ICNet); writes weights and card",
        description="Run a training config: evaluate the recipe under the config's protocol (10 random splits "
                    "by default), fit on the whole dataset, and write NAME.safetensors plus its JSON card to "
                    "--output-dir (default: the config's output_dir, else runs/NAME-DATE/ in the working "
                    "directory; never into the installed package). CONFIG is a packaged config's name "
                    "(`pyica train --list`) or a config file. A named dataset's folder: --root, the config's "
                    "root, or $PYICA_DATA/<dataset>. Frozen-feature heads are deterministic: --verify refits "
                    "and compares with the shipped weights (or those in --output-dir) instead of writing. "
                    "CM-SSA and ICNet configs train by gradient descent; the epoch is chosen on a validation "
                    "part, every epoch is checkpointed and --resume continues a killed run. Several GPUs: "
                    "torchrun --nproc_per_node 4 -m pyica train CONFIG (batch_size is the global batch; only "
                    "rank 0 writes). Score with the result: pyica score --weights runs/.../NAME.safetensors.",
    )
    p.add_argument("config", nargs="?",
                   help="a packaged config's name, e.g. effnet_lite0_within.savoias or cmssa/cmssa_offline.savoias, "
                        "or a JSON config file")
    p.add_argument("--list", action="store_true", help="list the packaged configs (name and description) and exit")
    p.add_argument("--root", help="dataset folder (default: the config's root, relative to the config file, "
                                  "else $PYICA_DATA/<dataset>)")
    p.add_argument("--output-dir", help="where to write weights and card (default: the config's output_dir, else "
                                        "runs/NAME-DATE/ in the working directory)")
    p.add_argument("--name", help="name of the trained model: the card's name and the file stem NAME.safetensors "
                                  "(default: the config's model); `pyica score --weights` reports it")
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="skip the split evaluation (the card then has no metrics)")
    p.add_argument("--verify", action="store_true",
                   help="refit and compare with existing weights: the shipped ones, or NAME.safetensors in "
                        "--output-dir (max score difference vs the config's tolerance, or the cross-device one "
                        "when this device is not the one the card says the head was fitted on); exit 1 if they "
                        "differ; writes nothing")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the checkpoints in OUTPUT_DIR/checkpoints/ (without "
                        "--output-dir: the newest runs/NAME-* holding checkpoints; same data order; finished fits "
                        "are not redone); without it leftover checkpoints are an error. Frozen-feature heads are "
                        "closed-form: nothing to resume")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:1, ... (default: auto; under torchrun each process uses its LOCAL_RANK GPU)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("validate-data", help="check a dataset: missing/unreadable files, score ranges, split counts")
    p.add_argument("dataset", help="dataset name (with --root), manifest CSV, or folder")
    p.add_argument("--root", help="dataset folder for named datasets")
    p.add_argument("--no-images", dest="check_images", action="store_false",
                   help="only check that files exist; do not decode them")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "merge",
        help="join the score files of a --shard or torchrun run into one",
        description="Merges score files (the OUT.rank{r}of{w} files of torchrun, or the outputs of --shard I/N "
                    "runs) into one output. When every part's sidecar records its shard and rank, rows come out "
                    "in the original input order; otherwise part after part. Refused: parts of different models, "
                    "weights or precision, unfinished parts, and parts that share an image (overlapping runs). "
                    "The output follows the usual rules (an existing file needs --overwrite; atomic finish).",
    )
    p.add_argument("parts", nargs="+", help="score files to merge (CSV, TSV, JSONL or Parquet), e.g. "
                                            "scores.rank*of8.csv")
    p.add_argument("-o", "--output", required=True, help="merged score file (format from the extension)")
    p.add_argument("--format", choices=("csv", "tsv", "jsonl", "parquet"), help="output format (default: from -o)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output when the merge finishes")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("summary", help="what a score file holds: counts, mean, quantiles, most and least complex",
                       description="Prints rows, scored and error counts, mean, std, min, 5/25/50/75/95% quantiles and "
                                   "max of the scores, and the k highest and lowest scored images.")
    p.add_argument("scores", help="score file written by `pyica score` (CSV, TSV, JSONL or Parquet)")
    p.add_argument("-k", "--top", type=_count(0), default=5, help="how many most and least complex images to list "
                                                                  "(default: 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser(
        "select",
        help="choose images from score files (range, top/bottom K, quantiles, per folder, balanced, errors); "
             "list them, copy or link them",
        description="Reads score files (CSV, TSV, JSONL or Parquet, e.g. the merged output of a sharded or Ray "
                    "run), applies the filters in this order, each to what the previous one kept: --min/--max, "
                    "--quantile, --top/--bottom, --balance (--per-folder: the last three within each source "
                    "folder). Writes a manifest (path, model, score, rank, reason, error; CSV to stdout without "
                    "-o and --to) and, with --to DIR, copies or links the images into DIR with their folder "
                    "layout. The originals are only read; nothing is written outside DIR and no existing file is "
                    "overwritten. Exit 0 when done, 1 when some copies failed (each reported), 2 when nothing "
                    "was done (docs/curation.md).",
    )

    def finite(text: str) -> float:
        """A finite number (``nan`` or ``inf`` as a bound would select nothing or everything)."""
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number, not {text!r}")
        return value

    p.add_argument("scores", nargs="+", metavar="SCORES",
                   help="score files written by pyica score or merge (several are read as one), or manifests "
                        "pyica select wrote")
    p.add_argument("-m", "--model", help="select the rows of this model (needed when the files hold several)")
    p.add_argument("--min", type=finite, dest="min_score", metavar="SCORE", help="keep scores >= SCORE")
    p.add_argument("--max", type=finite, dest="max_score", metavar="SCORE", help="keep scores <= SCORE")
    p.add_argument("--quantile", metavar="LO:HI",
                   help="keep scores between the LO and HI quantiles, e.g. 0.9:1 (the most complex tenth)")
    p.add_argument("--top", type=_count(1), metavar="K", help="keep the K highest scores")
    p.add_argument("--bottom", type=_count(1), metavar="K", help="keep the K lowest scores (with --top: both ends)")
    p.add_argument("--balance", type=_count(1), metavar="N",
                   help="keep N images spread evenly over the score quantiles (the centre of each of N "
                        "equal-count bins)")
    p.add_argument("--per-folder", action="store_true",
                   help="apply --quantile, --top/--bottom and --balance within each source folder (e.g. per "
                        "class); a member of an archive: its folder inside the archive")
    p.add_argument("--errors", action="store_true",
                   help="select the rows that failed instead (no score filter), e.g. to copy them for a look")
    p.add_argument("--to", metavar="DIR", help="copy (or link) the selected images into DIR, keeping their "
                                               "folder layout (see --relative-to)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--copy", dest="mode", action="store_const", const="copy",
                     help="copy the files (the default); archive members are extracted as ARCHIVE/MEMBER")
    how.add_argument("--link", dest="mode", action="store_const", const="hardlink",
                     help="hard links instead of copies (same file system; not for archive members)")
    how.add_argument("--symlink", dest="mode", action="store_const", const="symlink",
                     help="symbolic links to the originals instead of copies (not for archive members)")
    p.add_argument("--relative-to", metavar="FOLDER",
                   help="lay out the copies relative to FOLDER (default: the common folder of every path in the "
                        "score files, so that the layout does not depend on the filters)")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip a file that exists in DIR (default: refuse before copying anything); existing "
                        "files are never overwritten")
    p.add_argument("-o", "--output", help="manifest file to write (.csv, .tsv, .jsonl, .parquet)")
    p.add_argument("--format", choices=("csv", "tsv", "jsonl", "parquet"), help="manifest format (default: from -o)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing manifest when this run finishes")
    p.add_argument("--dry-run", action="store_true",
                   help="print the rows left after each filter, the score range kept and what --to would copy; "
                        "write nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary lines")
    p.set_defaults(func=cmd_select, mode="copy")

    p = sub.add_parser(
        "report",
        help="one self-contained HTML page of score files or eval results: gallery, histogram, scatter, errors",
        description="Writes one HTML page that works offline (thumbnails embedded, no request made): for score "
                    "files, a gallery sorted by score (filter and re-sort in the page), a histogram per model, "
                    "a scatter of each further file or model against the first (joined by path) with its SRCC, "
                    "and the error rows; for `pyica eval` results CSVs (detected by their columns), the metrics "
                    "tables. The output follows the usual rules (an existing file needs --overwrite; atomic).",
    )
    p.add_argument("inputs", nargs="+", metavar="SCORES",
                   help="score files (CSV, TSV, JSONL or Parquet) and/or `pyica eval -o` results CSVs")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--maps", metavar="DIR", help="the --maps folder of the scoring run: show each image's map")
    p.add_argument("--max-images", type=_count(0), default=500,
                   help="embed at most this many thumbnails, half highest and half lowest scored (default: 500)")
    p.add_argument("--max-rows", type=_count(1), default=10000,
                   help="list at most this many images in the gallery, the two ends of the ranking (default: 10000)")
    p.add_argument("--order", choices=("desc", "asc"), default="desc", help="gallery order (default: desc)")
    p.add_argument("--title", help="the page's title (default: from the input names)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "caption",
        help="write a scene caption per image (JSONL), for training CM-SSA's alignment branch",
        description="Captions every image once and caches them as JSONL rows (path, caption, error). Captions "
                    "are needed only to train CM-SSA's semantic alignment branch; scoring needs none. The "
                    "default captioner, imagenet-labels, runs offline (EfficientNet-Lite's top ImageNet classes "
                    "as a sentence); instructblip (the paper's), blip and blip2 need their Hugging Face weights "
                    "cached, or --allow-download. Rows go to OUT.part and are renamed to OUT at the end; a rerun "
                    "continues where the last one stopped unless --no-resume. OUT.meta.json records the settings.",
    )
    p.add_argument("inputs", nargs="+", metavar="DATASET_OR_INPUTS",
                   help="a dataset name (savoias, ic9600, visc-c) with --root, or image files, folders and "
                        ".csv manifests as for `pyica score`")
    p.add_argument("-o", "--output", required=True, help="captions file to write (.jsonl)")
    p.add_argument("--captioner", default="imagenet-labels",
                   choices=("imagenet-labels", "instructblip", "blip", "blip2", "file"),
                   help="who writes the captions (default: imagenet-labels, offline); file: copy them from "
                        "--captions-file")
    p.add_argument("--model-id", help="Hugging Face model id or local folder (instructblip, blip, blip2)")
    p.add_argument("--preset", choices=("short", "medium", "long"), default=None,
                   help="instructblip caption length: instruction and token budget, our wording since the "
                        "paper's is unpublished (default: medium)")
    p.add_argument("--instruction", help="instructblip instruction, or blip/blip2 text prompt (overrides --preset)")
    p.add_argument("--max-new-tokens", type=int, help="caption token budget (overrides --preset)")
    p.add_argument("--top-k", type=int, default=None, help="imagenet-labels: class names per caption (default: 3)")
    p.add_argument("--captions-file", help="file captioner: CSV or JSONL with path/image and caption columns")
    p.add_argument("--root", help="dataset folder, with a dataset name")
    p.add_argument("--batch-size", type=int, default=8, help="images per captioning batch (default: 8)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', 'mps' (default: auto)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over, replacing OUT and OUT.part, instead of skipping images already captioned")
    p.add_argument("--allow-download", action="store_true",
                   help="let Hugging Face captioners download weights that are not cached")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="do not descend into sub-folders")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining of an image encoder (CLICv2) on unlabeled images",
        description="Pretraining learns an image encoder from unlabeled images alone (CLICv2: patch-wise "
                    "contrastive learning plus masked entropy modelling); a complexity model is then trained on "
                    "the frozen encoder (probing). The config (configs/clicv2/) names the model, the data "
                    "(image folders, CSV manifests, WebDataset-style .tar shards with brace patterns such as "
                    "shards/ic1m-{000000..000149}.tar) and the recipe (AdamW, linear lr scaling with the global "
                    "batch, warm-up then cosine). OUTPUT_DIR gets last.pt (checkpoint every checkpoint_every "
                    "steps and at the end), log.jsonl (loss parts, lr, images/s) and, at the end, "
                    "encoder.safetensors with its JSON card. A stopped run continues exactly with --resume. "
                    "Several GPUs: torchrun --nproc_per_node 4 -m pyica pretrain CONFIG (batch_size is the "
                    "global batch, split across the processes; only rank 0 writes).",
    )
    p.add_argument("config", help="JSON config, e.g. configs/clicv2/clicv2_vit_tiny.cpu.json")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT_DIR/last.pt when it exists (the same samples and losses as an "
                        "uninterrupted run); without it an existing last.pt is an error")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="stop after global step N (the lr schedule still spans the whole config); writes the "
                        "checkpoint and the encoder so far; continue later with --resume")
    p.add_argument("--source", action="append", default=None, metavar="PATH",
                   help="data source replacing the config's data.sources (repeatable): image folder, CSV "
                        "manifest, .tar shard, glob or brace pattern")
    p.add_argument("--output-dir", help="where to write (default: the config's output_dir)")
    p.add_argument("--device", default="auto",
                   help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1' (default: auto; under "
                        "torchrun each process uses its LOCAL_RANK GPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes per training process that decode images "
                        "(default: spare CPU cores, at most 8; 0 = load in the main process)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_pretrain)
    return parser


def cmd_list(args) -> int:
    from .registry import DEFAULT_MODEL, get_entry, list_models

    names = list_models(args.pattern, kind=args.kind)
    if args.json:
        print(json.dumps([{"name": n, "kind": get_entry(n).kind, "description": get_entry(n).description}
                          for n in names], indent=2))
        return 0
    width = max((len(n) for n in names), default=4) + 2
    for n in names:
        entry = get_entry(n)
        mark = " (default)" if n == DEFAULT_MODEL else (" [needs --weights]" if entry.needs_weights else "")
        print(f"{n:<{width}}{entry.kind:<9}{entry.description}{mark}")
    return 0


def cmd_info(args) -> int:
    from .registry import model_info

    print(json.dumps(model_info(args.name), indent=2))
    return 0


def _environment(device) -> dict:
    import torch

    from .version import __version__

    return {
        "pyica_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if getattr(device, "type", "") == "cuda" else None,
    }


def _score_identity(args) -> dict:
    """What writes the rows of ``pyica score``: a resumed output must have been written by the same."""
    from .registry import get_entry
    from .weights import sha256_file

    if args.weights:
        weights = sha256_file(args.weights)
    else:
        weights = (get_entry(args.model).card.get("weights") or {}).get("sha256")
    return {"model": args.model, "weights_sha256": weights, "precision": args.precision}


def _files_read(inputs) -> list[str]:
    """The files named on the command line (manifests, archives, images): an output must not be one of them."""
    import os

    from .inputs import expand_input

    out = []
    for item in inputs:
        try:
            out.extend(p for p in expand_input(item) if os.path.isfile(p))
        except (OSError, ValueError):
            continue  # reported when the inputs are read
    return out


def cmd_score(args) -> int:
    if args.engine == "ray":  # the same rows and output rules, on Ray Data (pyica.integrations.ray)
        from .integrations.ray import score_command

        return score_command(args, identity=_score_identity, reads=_files_read(args.inputs))
    if args.num_cpus is not None or args.num_gpus is not None:
        raise ValueError("--num-cpus and --num-gpus size a Ray actor pool: add --engine ray")
    import os

    import torch

    from .registry import DEFAULT_MODEL, create_model, model_from_weights, trained_weights_card
    from .inputs import check_inputs, count_inputs, expand_input, is_archive
    from .runtime import torchrun_env
    from .scoring import inputs_to_score, rank_output_path, score_paths
    from .writers import ScoreWriter

    if args.maps and not (0 < args.map_patch <= 1 and 0 < args.map_stride <= 1):
        raise ValueError(f"--map-patch and --map-stride must be in (0, 1], got {args.map_patch} and {args.map_stride}")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the output, or replace it")
    check_inputs(args.inputs)
    if args.maps and any(is_archive(p) for item in args.inputs for p in expand_input(item)):
        raise ValueError("--maps cannot read images inside archives (.tar, .tar.gz, .tgz, .zip); extract them "
                         "or score without --maps")
    # --weights of a model pyica trained (a card beside it): the card says what to build and names the rows
    trained = trained_weights_card(args.weights) if args.weights else None
    requested, args.model = args.model, (trained["name"] if trained else args.model) or DEFAULT_MODEL
    rank, world, local_rank, local_world = torchrun_env()
    shard_i, shard_n = args.shard or (0, 1)
    if world > 1:
        if not args.output:
            raise ValueError(f"under torchrun (WORLD_SIZE={world}) -o is needed: each rank writes OUT.rank<r>of{world}.<ext>")
        args.output = rank_output_path(args.output, rank, world)
        if args.device in ("auto", "cuda") and torch.cuda.is_available():
            args.device = f"cuda:{local_rank}"
        if args.workers is None and local_world > 1:  # share the machine's cores between its ranks
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            args.workers = min(8, max(1, cores // local_world - 1))
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    # The output is checked, locked and prepared before the model loads: a refusal costs nothing.
    writer = ScoreWriter(args.output, args.format, resume=args.resume, overwrite=args.overwrite,
                         identity=_score_identity(args), reads=_files_read(args.inputs), wait=args.wait)
    finished = False
    try:
        if trained:
            model = model_from_weights(args.weights, device=args.device, expect=requested,
                                       allow_unverified=args.allow_unverified_weights)
        else:
            model = create_model(args.model, device=args.device, **({"weights": args.weights} if args.weights else {}),
                                 **({"allow_unverified": True} if args.allow_unverified_weights else {}))
        if writer.done and not args.quiet:
            log.info("resuming: %d inputs already in %s", len(writer.done), args.output)
        # Positions in the input stream: --shard I/N keeps p % N == I, then rank r of w keeps every w-th of
        # those from the r-th on, i.e. p % (N * w) == I + N * r. Nothing is listed: counts are kept on the fly.
        # An input named twice (a manifest listing a file again, a folder and a file in it) is scored once.
        counts = {"inputs": 0, "skipped": 0, "repeated": 0}
        paths = inputs_to_score(args.inputs, recursive=args.recursive, shard=(shard_i, shard_n), rank=rank,
                                world=world, done=writer.done, counts=counts)
        total = None
        if not args.quiet:  # a first pass over names only, so that the progress bar has a total and an ETA
            listed = count_inputs(args.inputs, recursive=args.recursive)
            if listed is not None:
                total = max(0, len(range(shard_i + shard_n * rank, listed, shard_n * world)) - len(writer.done))
        n_scored = n_errors = 0
        maps_written, map_errors, map_failures, map_seconds = 0, 0, [], 0.0
        if args.maps:
            from . import maps as mapping
            from .scoring import MapTimes, score_paths_with_maps

            maps_root = mapping.inputs_root(args.inputs)
            map_range = mapping.fixed_range(model.score_range) if args.map_scale == "fixed" else None
            if args.map_scale == "fixed" and map_range is None:
                log.warning("%s has an open score range (%s): maps are scaled per image, not comparable",
                            args.model, model.score_range)
            map_times = MapTimes()

        def write_maps(pairs) -> None:
            """Maps of the scored records (called after their scores are written); a failure is logged and kept.
            Each map's grid was computed with its score, from the same decoded image (score_paths_with_maps)."""
            nonlocal maps_written, map_errors, map_seconds
            if not args.maps:
                return
            t_maps = time.perf_counter()
            for rec, prepared in pairs:
                if rec.error:
                    continue
                try:
                    if prepared.error:
                        raise RuntimeError(prepared.error)
                    picture = mapping.render_map(prepared.image, prepared.grid, score=rec.score, value_range=map_range,
                                                 boxes=prepared.boxes)
                    mapping.write_map(args.maps, rec.path, prepared.grid, picture, maps_root)
                    maps_written += 1
                except Exception as err:  # one bad map must not stop the job
                    cause = prepared.error if prepared.error else f"{type(err).__name__}: {err}"
                    message = f"{rec.path}: {cause}"
                    log.warning("map failed: %s", message)
                    if len(map_failures) < 100:  # the metadata lists the first 100, counts them all
                        map_failures.append(message)
                    map_errors += 1
                prepared.image = None
            map_seconds += time.perf_counter() - t_maps

        t_model = time.perf_counter()
        batch: list = []
        first_error = None
        common = dict(batch_size=args.batch_size, num_workers=args.workers, precision=args.precision,
                      max_pixels=args.max_pixels, progress=not args.quiet, model_name=args.model, total=total)
        if args.maps:
            scored = score_paths_with_maps(paths, model, patch_fraction=args.map_patch,
                                           stride_fraction=args.map_stride, times=map_times, **common)
        else:
            scored = ((record, None) for record in score_paths(paths, model, **common))
        for record, prepared in scored:
            batch.append((record, prepared))
            if record.error:
                n_errors += 1
                first_error = first_error or record.error
            else:
                n_scored += 1
            if len(batch) >= args.batch_size:
                writer.write([r for r, _ in batch])
                write_maps(batch)
                batch = []
        writer.write([r for r, _ in batch])
        write_maps(batch)
        if args.maps:
            map_seconds += map_times.forward  # the patches' forwards ran inside the scoring loop
        seconds = time.perf_counter() - t0
        scoring_seconds = time.perf_counter() - t_model - map_seconds
        meta = score_run_meta(args, trained=trained, writer=writer, counts=counts, n_scored=n_scored,
                           n_errors=n_errors, seconds=seconds, scoring_seconds=scoring_seconds, started=started)
        meta.update(_environment(model.device), workers=args.workers, rank=rank, world_size=world)
        if args.maps:
            meta["maps"] = {"dir": args.maps, "patch_fraction": args.map_patch, "stride_fraction": args.map_stride,
                            "scale": "fixed" if map_range is not None else "per-image",
                            "range": list(map_range) if map_range is not None else None,
                            "written": maps_written, "errors": map_errors, "failures": map_failures,
                            "seconds": round(map_seconds, 3)}
        writer.close(finished=True, meta=meta)
        finished = True
    finally:
        if not finished:
            writer.close(finished=False)
    maps_line = (f"pyica: {maps_written} maps, {map_errors} map errors -> {args.maps}",) if args.maps else ()
    return score_run_outcome(args, writer, meta, first_error, more=maps_line)


def cmd_tiles(args) -> int:
    import os

    from .inputs import check_inputs
    from .registry import create_model, model_from_weights, trained_weights_card
    from .score_run import score_run_meta, score_run_outcome
    from .tiling import DEFAULT_NMS, run_tiles

    if args.top is None and args.min_score is None:
        raise ValueError("pyica tiles needs --top K, --min-score X or both: which tiles to keep")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the manifest, or replace it")
    nms = DEFAULT_NMS if args.nms is None else args.nms
    if not 0.0 <= nms <= 1.0:
        raise ValueError(f"--nms must be an IoU in [0, 1], not {nms}")
    check_inputs(args.inputs)
    trained = trained_weights_card(args.weights) if args.weights else None
    requested, args.model = args.model, trained["name"] if trained else args.model
    args.output = args.output or os.path.join(args.to, "tiles.csv")
    args.shard = None
    identity = {**_score_identity(args), "size": args.size, "stride": args.stride or args.size, "top": args.top,
                "min_score": args.min_score, "nms": nms, "tiles_dir": os.path.abspath(args.to)}
    if trained:
        model = model_from_weights(args.weights, device=args.device, expect=requested,
                                   allow_unverified=args.allow_unverified_weights)
    else:
        model = create_model(args.model, device=args.device, **({"weights": args.weights} if args.weights else {}),
                             **({"allow_unverified": True} if args.allow_unverified_weights else {}))
    started = datetime.now(timezone.utc)
    holder = {}

    def meta(run) -> dict:
        counts = {"inputs": run.inputs, "skipped": run.skipped, "repeated": run.repeated}
        fields = score_run_meta(args, trained=trained, writer=holder["writer"], counts=counts, n_scored=run.scored,
                                n_errors=run.errors, seconds=run.seconds, scoring_seconds=run.seconds, started=started)
        fields["weights"]["sha256"] = identity["weights_sha256"]
        fields.update(_environment(model.device), tiles={**{k: v for k, v in identity.items() if k != "model"},
                      "tiles": run.tiles, "written": run.written, "already_present": run.present,
                      "inputs_inside_tiles_dir_skipped": run.in_output})
        holder["meta"] = fields
        return fields

    class _Output:  # what score_run_meta and score_run_outcome read of a writer (the manifest is run_tiles')
        output = None
        done_errors = 0

    holder["writer"] = _Output()
    run = run_tiles(args.inputs, model, size=args.size, stride=args.stride, top=args.top, min_score=args.min_score,
                    nms=nms, out_dir=args.to, output=args.output, fmt=args.format, identity=identity,
                    resume=args.resume, overwrite=args.overwrite, wait=args.wait, recursive=args.recursive,
                    model_name=args.model, batch_size=args.batch_size, num_workers=args.workers,
                    precision=args.precision, max_pixels=args.max_pixels, progress=not args.quiet, meta=meta)
    holder["writer"].done_errors = run.done_errors
    if run.in_output:
        log.warning("%d inputs inside the tiles folder %s were left out", run.in_output, args.to)
    more = (f"pyica: {run.tiles} tiles ({run.written} crops written, {run.present} already there) -> {args.to}",)
    return score_run_outcome(args, holder["writer"], holder["meta"], run.first_error, more=more)


def cmd_eval(args) -> int:
    from . import evaluation
    from .data.loaders import load_dataset
    from .registry import DEFAULT_MODEL

    fit = None if args.fit == "none" else args.fit  # the plot's curve; the metrics always map errors
    ds = load_dataset(args.dataset, root=args.root)
    test_ds = load_dataset(args.test_dataset, root=args.test_root) if args.test_dataset and not args.pred else None
    reads = evaluation.files_read(pred=args.pred, datasets=[d for d in (ds, test_ds) if d is not None],
                                  dataset_args=(args.dataset, args.root, args.test_dataset, args.test_root),
                                  weights=args.weights)
    evaluation.check_outputs(args.output, args.plot, reads=reads, overwrite=args.overwrite)  # before any work
    if args.pred:
        rows, pred, target, categories = evaluation.evaluate_predictions_file(args.pred, ds, model=args.model)
        plot_data = (pred, target, categories)
        model_label = rows[0]["model"]
        note = evaluation.in_sample_note(evaluation.predictions_weights_use(model_label, ds.name))
    else:
        args.model = args.model or DEFAULT_MODEL
        model_kwargs = {**({"weights": args.weights} if args.weights else {}),
                        **({"allow_unverified": True} if args.allow_unverified_weights else {})}
        result = evaluation.run_protocol(
            args.model, ds, protocol=args.protocol, n_splits=args.splits,
            seed=args.seed, test_fraction=args.test_fraction, val_fraction=args.val_fraction,
            test_dataset=test_ds, device=args.device,
            batch_size=args.batch_size, num_workers=args.workers, precision=args.precision,
            max_pixels=args.max_pixels, progress=not args.quiet, model_kwargs=model_kwargs or None)
        rows = result.rows
        plot_data = result.first_split_predictions
        model_label = args.model
        note = evaluation.in_sample_note(result.weights)
    print(evaluation.format_rows(rows, note=note))
    if args.output:
        evaluation.write_rows(rows, args.output, overwrite=args.overwrite)
        print(f"pyica: results -> {args.output}", file=sys.stderr)
    if args.plot:
        evaluation.plot(plot_data, args.plot, title=model_label, fit=fit)
        print(f"pyica: scatter plot -> {args.plot}", file=sys.stderr)
    return 0


def cmd_merge(args) -> int:
    from .inputs import expand_input
    from .score_files import merge_score_files

    parts = [p for item in args.parts for p in expand_input(item)]
    summary = merge_score_files(parts, args.output, fmt=args.format, overwrite=args.overwrite)
    order = "in input order" if summary["input_order"] else "part after part (no sidecars recording the shards)"
    print(f"pyica: merged {summary['rows']} rows ({summary['errors']} errors) from {len(parts)} files, {order} "
          f"-> {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_summary(args) -> int:
    from .score_files import format_summary, summarize_scores

    summary = summarize_scores(args.scores, top=args.top)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return EXIT_OK if summary["scored"] else EXIT_FAILED


def cmd_select(args) -> int:
    from .curation import (copy_selected, destinations_existing, open_manifest, plan_copies, select_rows, shown,
                           write_manifest)
    from .score_run import EXIT_SOME_FAILED

    if args.output and args.dry_run:
        raise ValueError("--dry-run writes nothing: leave out -o")
    if args.to is None and args.mode != "copy":
        raise ValueError("--link and --symlink make links in --to DIR: add --to")
    selection = select_rows(args.scores, model=args.model, min_score=args.min_score, max_score=args.max_score,
                            quantile=args.quantile, top=args.top, bottom=args.bottom, balance=args.balance,
                            per_folder=args.per_folder, errors=args.errors)
    rows = selection.rows
    span = selection.score_range
    kept = f", scores {span[0]:.6g}..{span[1]:.6g}" if span else ""
    if args.dry_run:
        files = f"{len(selection.files)} file{'s' if len(selection.files) != 1 else ''}"
        model = f" (model {selection.model})" if selection.model else ""
        print(f"read {selection.read} rows from {files}{model}: {selection.scored} scored, {selection.errors} errors")
        for label, count in selection.steps:
            print(f"after {label}: {count}")
        print(f"kept {len(rows)} rows{kept}")
        if args.to and rows:
            plans = plan_copies(rows, args.relative_to or selection.root)
            unsafe = sum(p.problem is not None for p in plans)
            existing = len(destinations_existing(plans, args.to))
            print(f"--to {shown(args.to)}: would {'copy' if args.mode == 'copy' else 'link'} "
                  f"{len(plans) - unsafe - existing} files ({existing} exist already, {unsafe} cannot be placed "
                  "safely)")
        return EXIT_OK if rows else EXIT_FAILED
    if not rows:
        print(f"pyica: error: nothing selected ({selection.read} rows read, {selection.scored} scored); nothing "
              "written", file=sys.stderr)
        return EXIT_FAILED
    if not args.quiet:
        print(f"pyica: selected {len(rows)} of {selection.read} rows{kept}", file=sys.stderr)
    manifest = None
    if args.output:  # checked and locked before any copy, so that a refused manifest costs nothing
        manifest = open_manifest(args.output, args.format, overwrite=args.overwrite, reads=selection.files,
                                 identity={"command": "select"})
    try:
        report = None
        if args.to:
            report = copy_selected(rows, args.to, mode=args.mode, skip_existing=args.skip_existing,
                                   relative_to=args.relative_to or selection.root)
        if manifest is not None or not args.to:
            meta = {"command": " ".join(["pyica", *map(shown, args.argv)]), "scores": selection.files,
                    "model": selection.model, "steps": selection.steps}
            write_manifest(rows, manifest, args.format, meta=meta)
            manifest = None
    finally:
        if manifest is not None:  # the copies were refused or broke: no manifest of them is left behind
            manifest.abort(discard=True)
    if args.output and not args.quiet:
        print(f"pyica: manifest -> {args.output}", file=sys.stderr)
    if report is None:
        return EXIT_OK
    for path, problem in report.failed:
        print(f"pyica: error: not {'copied' if args.mode == 'copy' else 'linked'}: {shown(path)}: {shown(problem)}",
              file=sys.stderr)
    if not args.quiet or report.failed:
        done = {"copy": "copied", "hardlink": "hard-linked", "symlink": "linked"}[args.mode]
        print(f"pyica: {report.written} {done}, {report.skipped} skipped (existing), {len(report.failed)} failed "
              f"-> {args.to}", file=sys.stderr)
    if report.failed:
        return EXIT_SOME_FAILED if report.written or report.skipped else EXIT_FAILED
    return EXIT_OK


def cmd_report(args) -> int:
    from .html_report import build_report

    stats = build_report(args.inputs, args.output, maps=args.maps, max_images=args.max_images,
                         max_rows=args.max_rows, order=args.order, overwrite=args.overwrite, title=args.title)
    maps = f", {stats['maps']} maps" if args.maps else ""
    print(f"pyica: report of {stats['scored']} scores ({stats['errors']} errors, {stats['thumbnails']} thumbnails, "
          f"{stats['placeholders']} unreadable{maps}; {stats['eval_files']} results files) -> {args.output}",
          file=sys.stderr)
    return EXIT_OK


def _main_rank() -> bool:
    """False in the processes of a torchrun launch other than rank 0 (they print nothing)."""
    from .runtime import torchrun_env

    return torchrun_env().rank == 0


def cmd_train(args) -> int:
    if args.list:
        from .training.config import list_configs

        configs = list_configs()
        width = max((len(n) for n, _ in configs), default=4) + 2
        for name, description in configs:
            print(f"{name:<{width}}{description}")
        return 0
    if not args.config:
        raise ValueError("pyica train needs a CONFIG: a packaged config's name (`pyica train --list`) or a config file")
    from .training.trainers import TrainOptions, train_config

    result = train_config(args.config, TrainOptions(
        root=args.root, output_dir=args.output_dir, name=args.name, evaluate=args.evaluate, verify=args.verify,
        device=args.device, num_workers=args.workers, progress=not args.quiet, resume=args.resume))
    if not _main_rank():  # under torchrun only rank 0 reports
        return 0 if not args.verify or result["reproduced"] else 1
    if args.verify:
        print(json.dumps(result, indent=2))
        return 0 if result["reproduced"] else 1
    metrics = (result.get("evaluation") or {}).get("metrics", {})
    for scope in ("category_mean", "pooled"):
        if scope in metrics:
            m = metrics[scope]
            print(f"{scope}: SRCC {m['srcc_mean']:.3f} ± {m['srcc_std']:.3f}, PLCC {m['plcc_mean']:.3f} ± "
                  f"{m['plcc_std']:.3f} over {m['n_splits']} splits", file=sys.stderr)
    weights = result["weights"]
    print(json.dumps({"name": result.get("name"), "evaluation": result.get("evaluation"),
                      "weights": {k: weights.get(k) for k in ("file", "sha256", "format")}}, indent=2))
    print(f"pyica: wrote {result['weights']['file']} (sha256 {result['weights']['sha256'][:12]}...) and its card",
          file=sys.stderr)
    return 0


def cmd_pretrain(args) -> int:
    from .training.pretrain import pretrain

    summary = pretrain(args.config, resume=args.resume, max_steps=args.max_steps, device=args.device,
                       num_workers=args.workers, progress=not args.quiet, sources=args.source,
                       output_dir=args.output_dir)
    if not args.quiet and summary.get("encoder"):
        loss = summary["final_loss"]
        print(f"pyica: {summary['steps']}/{summary['total_steps']} steps, {summary['samples_seen']} samples, "
              f"final loss {loss if loss is None else f'{loss:.4f}'}, {summary['seconds']:.1f} s -> "
              f"{summary['encoder']}", file=sys.stderr)
    return 0


def cmd_validate(args) -> int:
    from .data.loaders import load_dataset
    from .data.validate import format_validation_report, validate_dataset

    ds = load_dataset(args.dataset, root=args.root)
    report = validate_dataset(ds, check_images=args.check_images)
    print(json.dumps(report, indent=2, default=str) if args.json else format_validation_report(report))
    problems = len(report.get("missing", [])) + len(report.get("unreadable", []))
    return 1 if problems else 0


def cmd_caption(args) -> int:
    from .captions import caption_dataset, create_captioner
    from .data.loaders import list_datasets, load_dataset
    from .inputs import iter_image_paths

    first = args.inputs[0]
    if len(args.inputs) == 1 and not Path(first).exists() and (args.root or first.lower() in list_datasets()):
        paths = load_dataset(first, root=args.root).full_paths()
    elif args.root:
        raise ValueError("--root applies to a dataset name, not to files, folders or manifests")
    else:
        paths = list(iter_image_paths(args.inputs, recursive=args.recursive))
    hf = {"model_id": args.model_id, "max_new_tokens": args.max_new_tokens, "device": args.device,
          "allow_download": args.allow_download}
    options = {
        "imagenet-labels": {"top_k": args.top_k, "device": args.device},
        "instructblip": {**hf, "preset": args.preset, "instruction": args.instruction},
        "blip": {**hf, "prompt": args.instruction},
        "blip2": {**hf, "prompt": args.instruction},
        "file": {"path": args.captions_file},
    }[args.captioner]
    if args.captioner == "file" and not args.captions_file:
        raise ValueError("--captioner file needs --captions-file")
    provider = create_captioner(args.captioner, **options)
    summary = caption_dataset(paths, provider, args.output, batch_size=args.batch_size, resume=args.resume,
                              progress=not args.quiet)
    if not args.quiet:
        print(f"pyica: {summary['captioned']} captioned, {summary['errors']} errors, "
              f"{summary['skipped_already_done']} already done, {summary['seconds']:.1f} s -> {args.output}",
              file=sys.stderr)
    return 0


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line, naming the file for OS errors (full disk, read-only, too long)."""
    from .writers import text_safe

    if isinstance(err, OSError) and err.strerror:
        where = err.filename if err.filename is not None else ""
        message = f"{where}: {err.strerror}" if where != "" else err.strerror
    elif isinstance(err, KeyError) and err.args:
        message = str(err.args[0])
    elif isinstance(err, (ValueError, RuntimeError, OSError)):
        message = str(err)
    else:
        message = f"{type(err).__name__}: {err} (unexpected; run with -v for the traceback and report it)"
    return text_safe(" ".join(str(message).split("\n")))


def _check_environment() -> None:
    """Environment variables pyica reads, checked before any work: a bad value is one line naming it."""
    from .loading import max_pixels_budget

    max_pixels_budget()


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="pyica: %(message)s",
                        stream=sys.stderr)
    try:
        if args.command not in ("list", "info"):  # these read no image: they run whatever the environment
            _check_environment()
        return args.func(args)
    except KeyboardInterrupt:
        print("pyica: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of stdout went away (`pyica score ... | head`): stop quietly, as other tools do
        import os

        with _suppress():
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as err:  # noqa: BLE001 - every failure is one line; -v shows the traceback
        if args.verbose:
            raise
        print(f"pyica: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_FAILED


def _suppress():
    import contextlib

    return contextlib.suppress(OSError, ValueError)
