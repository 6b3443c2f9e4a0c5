"""pyica: image complexity assessment in PyTorch.

The public API is small::

    import pyica
    pyica.list_models()                              # every registered scorer
    metric = pyica.create_metric()                   # the default model, a torch.nn.Module
    metric("photo.jpg")                              # -> float, higher = more complex
    for record in pyica.score(["photos/"]):          # batch scoring with DataLoader workers
        print(record.path, record.score, record.error)
    pyica.evaluate(predictions, human_scores)        # SRCC, PLCC, KRCC, RMSE, ...
    rows = pyica.tiles(["photos/"], size=512, top=8, to="crops/")  # the most complex tiles, as PNG crops
    pyica.select("scores.csv", top=100)              # rows of a score file: path, score, rank, reason
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

# The registry is plain Python (models are declared as data, built lazily); numpy, PIL and torch are
# imported only when something needs them, so `import pyica` and `pyica list` stay cheap.
from .registry import DEFAULT_MODEL, create_model, list_models, model_info
from .version import __version__

__all__ = [
    "__version__",
    "DEFAULT_MODEL",
    "ImageLoadError",
    "create_metric",
    "create_model",
    "evaluate",
    "list_models",
    "load_dataset",
    "load_image",
    "model_info",
    "score",
    "tiles",
    "select",
]


# pyica.select is pyica.curation.select (a module named `select` would replace the function on import)
_LAZY = {"ImageLoadError": "loading", "load_image": "loading", "select": "curation"}  # name -> submodule, imported on first use


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def create_metric(name: str = DEFAULT_MODEL, device: str | None = "auto", *, as_loss: bool = False,
                  loss_weight: float = 1.0, loss_reduction: str = "mean", **kwargs: Any):
    """A :class:`~pyica.metric.ComplexityMetric` (a ``torch.nn.Module``) for model ``name``: call it on
    paths, images, arrays or tensors. ``as_loss=True``: a differentiable ``loss_weight *
    loss_reduction(scores)`` of float tensors (learned models only; the score, not its negation)."""
    from .metric import ComplexityMetric

    return ComplexityMetric(create_model(name, device=device, **kwargs), name, as_loss=as_loss,
                            loss_weight=loss_weight, loss_reduction=loss_reduction)


def score(
    inputs: str | Iterable[str],
    model: str = DEFAULT_MODEL,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str | None = "auto",
    recursive: bool = True,
    progress: bool = False,
) -> Iterator:
    """Score files, folders, CSV manifests and ``.tar`` shards; yields one ``ScoreRecord(path, model, score, error)`` per image.

    A file that cannot be read yields a record with ``score=None`` and the reason in ``error``.
    """
    from .metric import as_path_list
    from .inputs import iter_image_paths
    from .scoring import score_paths

    scorer = create_model(model, device=device)
    paths = iter_image_paths(as_path_list(inputs), recursive=recursive)  # streamed, never listed
    return score_paths(paths, scorer, batch_size=batch_size, num_workers=num_workers, progress=progress, model_name=model)


def tiles(
    inputs: str | Iterable[str],
    model: str = DEFAULT_MODEL,
    *,
    size: int = 512,
    stride: int | None = None,
    top: int | None = None,
    min_score: float | None = None,
    nms: float | None = 0.3,
    to: str | None = None,
    output: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str | None = "auto",
    recursive: bool = True,
    progress: bool = False,
) -> list:
    """The most complex ``size`` x ``size`` tiles of each image, as ``pyica tiles`` makes them (docs/tiles.md):
    a list of :class:`~pyica.tiles.TileRow` (``path, tile, x, y, w, h, score, rank, kept, model, error``), the
    rows of the manifest. Crops are written (PNG, never over a file) only with ``to``; the manifest only with
    ``output`` (``resume``/``overwrite`` as for ``pyica tiles``). ``top``/``min_score`` ``None``: no limit;
    ``nms`` ``None``: no suppression."""
    import os

    from .metric import as_path_list
    from .tiling import run_tiles

    scorer = create_model(model, device=device)
    identity = {"size": size, "stride": stride or size, "top": top, "min_score": min_score, "nms": nms,
                "tiles_dir": None if to is None else os.path.abspath(to)}
    run = run_tiles(as_path_list(inputs), scorer, size=size, stride=stride, top=top, min_score=min_score, nms=nms,
                    out_dir=to, output=output, identity=identity, resume=resume, overwrite=overwrite,
                    recursive=recursive, model_name=model, batch_size=batch_size, num_workers=num_workers,
                    progress=progress, collect=True)
    return run.rows


def evaluate(pred, target, categories=None, *, fit_per_category: bool = False) -> dict:
    """SRCC, PLCC, KRCC of ``pred`` against ``target`` (raw predictions), and PLCC, RMSE, MAE and both
    RMAE definitions after a 4-parameter logistic maps the predictions into the target's units
    (``*_logistic4`` keys; the raw-unit errors ``rmse``, ``mae``, ... are there too).

    With ``categories``, per-category metrics and their mean and variance are added
    (``fit_per_category``: one mapping per category, for per-category label scales).
    """
    from .metrics import evaluate as _evaluate

    return _evaluate(pred, target, categories=categories, fit_per_category=fit_per_category)


def load_dataset(name_or_path: str, root: str | None = None):
    """A :class:`~pyica.data.dataset.ComplexityDataset` by name (``savoias``, ``ic9600``, ``visc-c``) or path."""
    from .data.loaders import load_dataset as _load_dataset

    return _load_dataset(name_or_path, root=root)
