"""Evaluation protocols: which images a model is tested on, and the tidy rows that report it.

Protocols (``run_protocol``):

* ``all``: the whole dataset is the test set (for models that are not trained on it).
* ``official``: the dataset's own train/test split (IC9600's ``train.txt``/``test.txt``).
* ``random``: ``n_splits`` seeded random train:test splits, stratified by category, duplicate groups
  on one side, with a validation part carved from each training part for model selection.
* ``loco``: leave one category out (train on the others, test on it): the cross-domain protocol
  when only one dataset is at hand.
* cross-dataset: ``test_dataset`` given: train on the whole of ``dataset``, test on the other.

A model that can be trained has a method ``fit_dataset(train, val)`` (train and val are
:class:`~pyica.data.dataset.ComplexityDataset`). Under ``random``, ``loco``, ``official`` and
cross-dataset it is refit on every split's training part (the shipped head of a default-model preset
is replaced by one fitted on that part: the recipe is evaluated, not the shipped weights). Under ``all``
nothing is refit: the model scores with its weights as loaded (there is no training part), and a
trainable model without weights is refused. Any other model is scored once on every image and each
split reads its test part from those scores.

Every row says which weights scored it (``weights``: ``loaded``, ``refit`` or ``none`` for a classic
measure) and whether the scores are ``in_sample``: loaded weights whose card names the evaluated
dataset as their training data. :func:`in_sample_note` turns that into the line printed above the table.
Metrics: :func:`pyica.metrics.evaluate` (errors after a logistic mapping into the label's units).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.dataset import ComplexityDataset
from .data.loaders import load_dataset
from .data.splits import Split, leave_one_category_out, official_split, repeated_random_splits
from .metrics import evaluate
from .registry import create_model, get_entry
from .reports import format_table, is_results_header, results_rows, scatter_plot, summarise, write_results_csv
from .scoring import score_paths
from .version import __version__
from .writers import read_scores

__all__ = ["EvaluationResult", "run_protocol", "predict_dataset", "evaluate_predictions_file", "metric_rows",
           "split_rows", "make_splits", "stamp_rows", "check_outputs", "write_rows", "WeightsUse", "weights_use",
           "in_sample_note", "REFIT_PROTOCOLS"]

log = logging.getLogger(__name__)

PROTOCOLS = ("all", "official", "random", "loco")
#: Protocols under which a trainable model is refit on each training part (``all`` scores as loaded).
REFIT_PROTOCOLS = ("random", "loco", "official")


@dataclass
class EvaluationResult:
    rows: list[dict]
    #: (pred, target, categories) of the first split's test part, for a scatter plot
    first_split_predictions: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    #: split name -> predictions on that split's test part (in ``split.test`` order; ``"all"`` for a
    #: cross-dataset run), so callers can compute other metrics (e.g. after a fitted mapping) without refitting
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    #: which weights scored, and whether the scores are in-sample (:func:`weights_use`)
    weights: "WeightsUse | None" = None


# --- which weights scored, and were the test images in their training data? ----------------------------

@dataclass(frozen=True)
class WeightsUse:
    """How a model's weights were used in an evaluation, for the ``weights``/``in_sample`` columns.

    ``weights``: ``"loaded"`` (scored as loaded: shipped or ``--weights``), ``"refit"`` (refit on each
    split's training part) or ``"none"`` (no learned weights: a classic measure). ``trained_on``: the
    datasets the loaded weights' card names as training data. ``in_sample``: loaded weights trained on
    the evaluated dataset, so its test images were among their training images. ``refit_protocols``:
    the protocols that would refit the model instead (empty when it cannot be refit by ``pyica eval``).
    """

    model: str
    dataset: str
    weights: str
    trained_on: tuple[str, ...] = ()
    in_sample: bool = False
    refit_protocols: tuple[str, ...] = ()

    def columns(self) -> dict:
        return {"weights": self.weights, "in_sample": self.in_sample}


def card_training_datasets(card: dict) -> tuple[str, ...]:
    """The dataset names a weights card gives as its training data (``training.dataset``, a name or a list)."""
    named = (card or {}).get("training", {}) or {}
    value = named.get("dataset") or named.get("datasets") or ()
    return tuple(str(v) for v in ([value] if isinstance(value, str) else value))


def _model_card(model_name: str, weights=None) -> tuple[dict, str | None]:
    """The card of the weights a model scores with (``weights``' card, else the registered one) and
    the registry kind (``None`` for a name that is not registered)."""
    try:
        entry = get_entry(model_name)
    except KeyError:
        entry = None
    card = entry.card if entry is not None else {}
    if weights:
        from .weights import read_card

        try:
            card = read_card(weights)
        except (OSError, ValueError):  # loading the model reports a bad card; here it only means "unknown"
            card = {}
    return card, (entry.kind if entry is not None else None)


def weights_use(model_name: str, dataset_name: str, *, refit: bool, trainable: bool, weights=None,
                refit_protocols: tuple[str, ...] | None = None) -> WeightsUse:
    """:class:`WeightsUse` of ``model_name`` scoring ``dataset_name`` (``refit``: refit on each training
    part; ``trainable``: it could be; ``weights``: a ``--weights`` file instead of the shipped weights)."""
    card, kind = _model_card(model_name, weights)
    trained_on = card_training_datasets(card)
    protocols = refit_protocols if refit_protocols is not None else (REFIT_PROTOCOLS if trainable else ())
    if refit:
        return WeightsUse(model_name, dataset_name, "refit", trained_on, False, protocols)
    if kind == "classic":
        return WeightsUse(model_name, dataset_name, "none")
    in_sample = dataset_name.lower() in {name.lower() for name in trained_on}
    return WeightsUse(model_name, dataset_name, "loaded", trained_on, in_sample, protocols)


def in_sample_note(use: WeightsUse | None) -> str | None:
    """The line printed above eval's table when the scores are in-sample, naming what evaluates out of
    sample instead; ``None`` otherwise."""
    if use is None or not use.in_sample:
        return None
    if use.refit_protocols:
        instead = (f"--protocol {', '.join(use.refit_protocols)} refit the head on each training part "
                   "and score only images it was not fitted on")
    else:
        instead = "pyica eval cannot refit this model: evaluate its recipe with `pyica train` on held-out images"
    return (f"note: {use.model} was trained on {use.dataset} (its card), so these scores are in-sample "
            f"(weights as loaded, test images among its training images); {instead}.")


def predict_dataset(model, ds: ComplexityDataset, *, batch_size=32, num_workers=None, precision="fp32",
                    max_pixels=None, progress=False) -> tuple[np.ndarray, dict[str, str]]:
    """Scores of every image of ``ds`` (``nan`` where loading failed) and ``{path: error}``.

    A model with ``score_files`` (one that caches features across calls) scores through it.
    """
    paths = ds.full_paths()
    if callable(getattr(model, "score_files", None)) and precision == "fp32":
        return model.score_files(paths, batch_size=batch_size, num_workers=num_workers, max_pixels=max_pixels,
                                 progress=progress)
    scores = np.full(len(paths), np.nan)
    errors: dict[str, str] = {}
    for i, record in enumerate(score_paths(paths, model, batch_size=batch_size, num_workers=num_workers,
                                           precision=precision, max_pixels=max_pixels, progress=progress)):
        if record.error:
            errors[record.path] = record.error
        else:
            scores[i] = record.score
    return scores, errors


def metric_rows(pred, target, categories, *, per_category_scale=False, model, dataset, protocol, split,
                **extra) -> list[dict]:
    """Tidy rows for one test set: ``pooled``, and with several categories one per category plus ``category_mean``.

    Error metrics are in the label's units after a logistic mapping fitted on these predictions
    (:func:`pyica.metrics.evaluate`); with ``per_category_scale`` (SAVOIAS) one mapping per category,
    since scores of different categories are not on one scale.
    """
    categories = np.asarray(categories, dtype=str) if categories is not None else None
    has_categories = categories is not None and len(set(categories.tolist()) - {""}) > 1
    result = evaluate(pred, target, categories=categories if has_categories else None,
                      fit_per_category=bool(per_category_scale and has_categories))
    return results_rows(result, model=model, dataset=dataset, protocol=protocol, split=split, **extra)


def split_rows(pred_all: np.ndarray, ds: ComplexityDataset, splits: list[Split], *, model: str, protocol: str,
               **extra) -> list[dict]:
    """Rows of every split's test part, for a model whose scores on all of ``ds`` are already known."""
    rows: list[dict] = []
    for split in splits:
        test = ds.subset(split.test)
        rows.extend(metric_rows(pred_all[split.test], test.scores, test.categories,
                                per_category_scale=ds.per_category_scale, model=model, dataset=ds.name,
                                protocol=protocol, split=split.name, **extra))
    return rows


def make_splits(ds: ComplexityDataset, protocol: str, n_splits: int, seed: int, test_fraction: float,
            val_fraction: float) -> list[Split]:
    if protocol == "all":
        return [Split("all", np.array([], int), np.array([], int), np.arange(len(ds)))]
    if protocol == "official":
        return [official_split(ds, val_fraction=val_fraction, seed=seed)]
    if protocol == "random":
        return repeated_random_splits(ds, n_splits=n_splits, seed=seed, test_fraction=test_fraction,
                                      val_fraction=val_fraction)
    if protocol == "loco":
        return leave_one_category_out(ds, val_fraction=val_fraction, seed=seed)
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")


def run_protocol(model_name: str, dataset: str | ComplexityDataset, *, root=None, protocol="all", n_splits=10,
                 seed=0, test_fraction=0.2, val_fraction=0.1, test_dataset=None, test_root=None,
                 device="auto", batch_size=32, num_workers=None, precision="fp32", max_pixels=None,
                 progress=False, model_kwargs=None, model=None) -> EvaluationResult:
    """Evaluate ``model_name`` on ``dataset`` under ``protocol`` (see the module doc).

    ``model``: an already built instance to use instead of building ``model_name`` (a trainable
    model then keeps what it cached, e.g. features, across splits and later fits).

    Raises ``ValueError`` for a trainable model without weights under ``all`` (nothing to score with,
    and no training part to fit on) and for an unknown protocol.
    """
    ds = dataset if isinstance(dataset, ComplexityDataset) else load_dataset(dataset, root=root)
    if not ds.labelled:
        raise ValueError(f"dataset {ds.name!r} has no human scores to evaluate against")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    if model is None:
        model = create_model(model_name, device=device, **(model_kwargs or {}))
    trainable = callable(getattr(model, "fit_dataset", None))
    weights_file = (model_kwargs or {}).get("weights")
    score_kw = dict(batch_size=batch_size, num_workers=num_workers, precision=precision,
                    max_pixels=max_pixels, progress=progress)
    rows: list[dict] = []
    first = None
    errors: dict[str, str] = {}

    if test_dataset is not None:
        test_ds = test_dataset if isinstance(test_dataset, ComplexityDataset) else load_dataset(test_dataset, root=test_root)
        use = weights_use(model_name, test_ds.name, refit=trainable, trainable=trainable, weights=weights_file)
        t0 = time.perf_counter()
        if trainable:
            model.fit_dataset(ds, None)
        pred, errors = predict_dataset(model, test_ds, **score_kw)
        rows = metric_rows(pred, test_ds.scores, test_ds.categories,
                           per_category_scale=test_ds.per_category_scale, model=model_name,
                           dataset=f"{ds.name}->{test_ds.name}", protocol="cross", split="all", **use.columns())
        stamp_rows(rows, time.perf_counter() - t0, errors)
        return EvaluationResult(rows, (pred, test_ds.scores, test_ds.categories), errors, {"all": pred}, use)

    # `all` has no training part: the model scores as loaded, a trainable one is never refit there
    refit = trainable and protocol != "all"
    if trainable and not refit and getattr(model, "fitted", True) is False:
        raise ValueError(f"{model_name} has no trained weights, and protocol 'all' scores a model as loaded "
                         f"(nothing to fit on): pass --weights, or use --protocol {' or '.join(REFIT_PROTOCOLS[:2])}")
    use = weights_use(model_name, ds.name, refit=refit, trainable=trainable, weights=weights_file,
                      refit_protocols=_refit_protocols(ds) if trainable else ())
    splits = make_splits(ds, protocol, n_splits, seed, test_fraction, val_fraction)
    if not refit:
        t0 = time.perf_counter()
        pred_all, errors = predict_dataset(model, ds, **score_kw)
        rows = split_rows(pred_all, ds, splits, model=model_name, protocol=protocol, **use.columns())
        stamp_rows(rows, time.perf_counter() - t0, errors)
        first_test = splits[0].test
        return EvaluationResult(rows, (pred_all[first_test], ds.scores[first_test], ds.categories[first_test]), errors,
                                {split.name: pred_all[split.test] for split in splits}, use)
    predictions: dict[str, np.ndarray] = {}
    for split in splits:
        t0 = time.perf_counter()
        model.fit_dataset(ds.subset(split.train), ds.subset(split.val) if len(split.val) else None)
        test = ds.subset(split.test)
        pred, split_errors = predict_dataset(model, test, **score_kw)
        errors.update(split_errors)
        split_result = metric_rows(pred, test.scores, test.categories,
                                   per_category_scale=ds.per_category_scale, model=model_name, dataset=ds.name,
                                   protocol=protocol, split=split.name, **use.columns())
        stamp_rows(split_result, time.perf_counter() - t0, split_errors)
        rows.extend(split_result)
        predictions[split.name] = pred
        if first is None:
            first = (pred, test.scores, test.categories)
    return EvaluationResult(rows, first, errors, predictions, use)


def _refit_protocols(ds: ComplexityDataset) -> tuple[str, ...]:
    """The protocols that refit a trainable model on ``ds``: ``official`` only where it has that split;
    ``loco`` only with several categories."""
    categories = set(ds.categories.tolist()) - {""} if len(ds.categories) else set()
    return tuple(p for p in REFIT_PROTOCOLS
                 if (p != "official" or "official" in ds.splits) and (p != "loco" or len(categories) > 1))


def stamp_rows(rows: list[dict], seconds: float, errors: dict) -> None:
    """Add the load-error count, wall time and pyica version to every row (in place)."""
    for row in rows:
        row.update(load_errors=len(errors), seconds=round(seconds, 3), pyica_version=__version__)


def _read_predictions(pred_path, model: str | None) -> tuple[dict[str, float], str | None]:
    """``{resolved path: score}`` of a `pyica score` file, refusing what would evaluate silently wrong
    (rows of several models without ``model`` choosing one, a path twice, a NaN or infinite score);
    error rows (no score) are left out with a warning. Returns the predictions and the model chosen."""
    try:
        rows = read_scores(pred_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{pred_path}: predictions file not found") from None
    except UnicodeDecodeError:
        raise ValueError(f"{pred_path}: not a UTF-8 predictions file") from None
    except ValueError as err:  # a score that is no number; a JSONL line that is no JSON
        message = str(err)
        raise ValueError(message if message.startswith(str(pred_path)) else f"{pred_path}: {message}") from None
    if any(not isinstance(row, dict) or not row.get("path") for row in rows):
        raise ValueError(f"{pred_path}: not a pyica predictions file (a row without a 'path')")
    models = sorted({str(row.get("model") or "") for row in rows})
    if model is not None:
        if model not in models:
            raise ValueError(f"{pred_path}: no rows of model {model!r} (the file holds "
                             f"{', '.join(repr(m) for m in models if m) or 'rows without a model column'})")
        rows = [row for row in rows if str(row.get("model") or "") == model]
    elif len(models) > 1:
        raise ValueError(f"{pred_path}: rows of {len(models)} models ({', '.join(repr(m) for m in models)}); "
                         "choose one with -m/--model")
    counts: dict[str, int] = {}
    for row in rows:
        key = str(Path(row["path"]).resolve())
        counts[key] = counts.get(key, 0) + 1
    duplicates = {k: n for k, n in counts.items() if n > 1}
    if duplicates:
        example, times = next(iter(duplicates.items()))
        raise ValueError(f"{pred_path}: {len(duplicates)} image path(s) appear more than once (e.g. {example} "
                         f"{times} times); which score counts is ambiguous: remove the duplicates")
    predictions: dict[str, float] = {}
    not_finite, missing = [], []
    for row in rows:
        score = row.get("score")
        if score is None or score == "":
            missing.append(row)
            continue
        try:
            value = float(score)
        except (TypeError, ValueError):
            raise ValueError(f"{pred_path}: score {score!r} of {row['path']} is not a number") from None
        if not np.isfinite(value):
            not_finite.append(row["path"])
        predictions[str(Path(row["path"]).resolve())] = value
    if not_finite:
        raise ValueError(f"{pred_path}: {len(not_finite)} row(s) have a NaN or infinite score (e.g. {not_finite[0]}); "
                         "a model that scores NaN is broken: rescore, or drop those rows")
    if missing:
        errors = sum(1 for row in missing if row.get("error"))
        log.warning("%s: %d row(s) without a score (%d with an error, e.g. %s) are left out of the metrics",
                    pred_path, len(missing), errors, missing[0]["path"])
    return predictions, (model if model is not None else (models[0] or None) if models else None)


def evaluate_predictions_file(pred_path, dataset, root=None, model: str | None = None):
    """Join a `pyica score` output to a dataset's human scores by image path and compute metrics.

    Returns ``(rows, pred, target, categories)``. Paths match when they resolve to the same file
    or, failing that, when one ends with the other (predictions made with other roots). The rows'
    ``model`` is the model named in the predictions' ``model`` column (the file's name when it has
    none), ``predictions`` the file's name; ``weights``/``in_sample`` come from the registered card
    of that model (scores made with other ``--weights`` than the registered ones are not told apart).

    Refused (``ValueError``, one line naming the file): rows of several models unless ``model`` names
    the one to evaluate, an image path that appears twice, a NaN or infinite score. Rows without a
    score (images the model could not read) are left out of the metrics, with a warning that counts them.
    """
    predictions, chosen = _read_predictions(pred_path, model)
    ds = dataset if isinstance(dataset, ComplexityDataset) else load_dataset(dataset, root=root)
    by_suffix = {}
    for key, value in predictions.items():
        by_suffix.setdefault(Path(key).name, []).append((key, value))
    pred = np.full(len(ds), np.nan)
    for i in range(len(ds)):
        full = str(ds.full_path(i).resolve())
        if full in predictions:
            pred[i] = predictions[full]
            continue
        rel = Path(ds.paths[i]).as_posix()
        matches = [v for k, v in by_suffix.get(Path(rel).name, []) if Path(k).as_posix().endswith("/" + rel)]
        if len(matches) == 1:
            pred[i] = matches[0]
    matched = int(np.isfinite(pred).sum())
    if matched == 0:
        raise ValueError(f"{pred_path}: no prediction path matches an image of dataset {ds.name!r}")
    label = chosen or Path(pred_path).name
    use = predictions_weights_use(chosen, ds.name) if chosen else None
    rows = metric_rows(pred, ds.scores, ds.categories, per_category_scale=ds.per_category_scale,
                       model=label, dataset=ds.name, protocol="predictions", split="all",
                       predictions=Path(pred_path).name, **(use.columns() if use else {"weights": "unknown"}),
                       unmatched=len(ds) - matched, pyica_version=__version__)
    return rows, pred, ds.scores, ds.categories


def predictions_weights_use(model_name: str, dataset_name: str) -> WeightsUse | None:
    """:class:`WeightsUse` of a registered model's predictions (scored as loaded, never refit); ``None``
    for a model name that is not registered. Its refit protocols are those of ``pyica eval -m`` for
    models whose card records a ``ridge`` training method (the default model's presets)."""
    try:
        get_entry(model_name)
    except KeyError:
        return None
    card, _ = _model_card(model_name)
    method = ((card.get("training") or {}).get("config") or {}).get("method")
    return weights_use(model_name, dataset_name, refit=False, trainable=method == "ridge")


# --- where eval writes ----------------------------------------------------------------------------------

def _is_results_csv(path: Path) -> bool:
    """Whether ``path`` is a results CSV pyica wrote (:func:`~pyica.reports.is_results_header`)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return is_results_header(header)


#: Files in a dataset folder that may be label files or splits, which eval may read.
_LABEL_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".jsonl", ".xlsx", ".xls", ".mat")


def files_read(*, pred=None, datasets=(), dataset_args=(), weights=None) -> list[str]:
    """Every file an eval run reads (so that its outputs never replace one): the predictions file, the
    weights and their card, manifests given as files, each dataset's images, and the label-like files
    (CSV, text, JSON, spreadsheets) in each dataset's folder and in folders given as datasets; results CSVs
    pyica wrote there are not read, so they stay appendable."""
    from .weights import card_path_of

    reads = [p for p in (pred, weights, card_path_of(weights) if weights else None) if p]
    folders = set()
    for arg in dataset_args:
        if arg and os.path.isfile(arg):
            reads.append(arg)
            folders.add(os.path.dirname(os.path.abspath(arg)))
        elif arg and os.path.isdir(arg):
            folders.add(arg)
    for ds in datasets:
        reads.extend(str(p) for p in ds.full_paths())
        folders.add(str(ds.root))
    for folder in folders:
        with os.scandir(folder) as entries:
            reads.extend(e.path for e in entries if e.name.lower().endswith(_LABEL_SUFFIXES) and e.is_file()
                         and not _is_results_csv(Path(e.path)))
    return reads


def _is_png(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


def check_outputs(output=None, plot=None, *, reads=(), overwrite: bool = False) -> None:
    """Refuse, before any work, an eval output that could destroy data (``ValueError``, one line).

    ``output`` (the results CSV) and ``plot`` must not resolve (symlinks followed) to a file eval reads
    (``reads``, see :func:`files_read`), nor to each other, nor be a folder, a FIFO or a device. An
    existing ``output`` is appended to when it is a pyica results CSV (its header starts with the results
    columns), an existing ``plot`` replaced when it is a PNG; any other existing file is refused unless
    ``overwrite``."""
    read_files = {os.path.realpath(p): str(p) for p in reads if p}
    seen: dict[str, str] = {}
    for flag, target in (("-o/--output", output), ("--plot", plot)):
        if not target:
            continue
        real = os.path.realpath(target)
        if real in read_files:
            raise ValueError(f"{target}: {flag} is {read_files[real]}, which eval reads; choose another file")
        if real in seen:
            raise ValueError(f"{target}: {flag} and {seen[real]} are the same file")
        seen[real] = flag
        if not os.path.exists(real):
            continue
        if os.path.isdir(real):
            raise ValueError(f"{target}: {flag} is a folder; name a file")
        if not os.path.isfile(real):
            raise ValueError(f"{target}: {flag} is not a regular file (a FIFO, socket or device)")
        if flag == "-o/--output" and not _is_results_csv(Path(real)) and not overwrite:
            raise ValueError(f"{target}: {flag} exists and is not a pyica results CSV, so rows cannot be appended; "
                             "pass --overwrite to replace it")
        if flag == "--plot" and not _is_png(real) and not overwrite:
            raise ValueError(f"{target}: {flag} exists and is not a PNG; pass --overwrite to replace it")
    if plot:  # found out now (after the file checks), not after the whole evaluation has run
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plot draws with matplotlib, which is not installed: pip install 'pyica[plot]'")


def write_rows(rows: list[dict], path, *, overwrite: bool = False) -> None:
    """Write results ``rows`` to ``path`` atomically: appended to an existing pyica results CSV, else (a
    new file, or any file with ``overwrite``) a fresh file. An existing file that is not a results CSV is
    refused without ``overwrite`` (see :func:`check_outputs`)."""
    path = Path(path)
    exists = path.exists()
    appendable = exists and _is_results_csv(path)
    if exists and not appendable and not overwrite:
        raise ValueError(f"{path}: not a pyica results CSV, so rows cannot be appended; pass --overwrite to replace it")
    write_results_csv(rows, path, append=appendable and not overwrite)


TABLE_COLUMNS = ("model", "dataset", "protocol", "split", "category", "n", "srcc", "plcc", "krcc", "rmse_logistic4",
                 "weights", "in_sample")
SUMMARY_COLUMNS = ("model", "dataset", "protocol", "category", "n_splits", "srcc_mean", "srcc_std", "plcc_mean",
                   "plcc_std", "krcc_mean", "rmse_logistic4_mean", "weights", "in_sample")


def format_rows(rows: list[dict], note: str | None = None) -> str:
    """A terminal table: every row for one split, mean and std over splits when there are several;
    ``note`` (e.g. :func:`in_sample_note`) is its first line. ``rmse_logistic4`` is in the label's units."""
    if len({r.get("split") for r in rows}) > 1:
        table = format_table(summarise(rows, by=("model", "dataset", "protocol", "category", "weights", "in_sample")),
                             columns=list(SUMMARY_COLUMNS))
    else:
        table = format_table(rows, columns=[c for c in TABLE_COLUMNS if any(c in r for r in rows)])
    return f"{note}\n{table}" if note else table


def plot(data, path, title=None, fit=None) -> None:
    pred, target, categories = data
    scatter_plot(pred, target, path, categories=categories, title=title, fit=fit)
