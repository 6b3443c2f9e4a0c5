"""The model registry: every scorer pyica knows, by name.

Names follow timm's ``arch.tag`` convention: ``arch`` names the code, the optional ``tag`` names
the weights or variant (``effnet_lite2_ridge.savoias``). Classic measures have no tag.
Everything that scores, evaluates or benchmarks a model goes through :func:`create_model`, so every
model is treated the same way.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "ModelEntry",
    "register_model",
    "list_models",
    "get_entry",
    "model_info",
    "create_model",
    "model_from_weights",
    "trained_weights_card",
    "DEFAULT_MODEL",
]

#: The model `pyica score` uses when none is named.
DEFAULT_MODEL = "effnet_lite0_within.savoias"


class LazyBuilder:
    """A builder named ``"module:function"``, imported on first use and called as ``function(name, **kwargs)``.

    Declaring builders this way keeps the registry free of torch: listing models, reading their metadata
    and cards import no model code. :func:`inspect.signature` sees the function's keyword arguments."""

    def __init__(self, target: str, name: str):
        module, sep, function = target.partition(":")
        if not (module and sep and function):
            raise ValueError(f"a builder must be a callable or 'module:function', not {target!r}")
        self.target, self.name = target, name

    @functools.cached_property
    def function(self) -> Callable[..., Any]:
        module, _, function = self.target.partition(":")
        found = getattr(importlib.import_module(module), function, None)
        if not callable(found):  # not AttributeError: inspect.signature would swallow it
            raise ImportError(f"builder {self.target!r} of model {self.name!r} is not a function of {module}")
        return functools.partial(found, self.name)

    def __call__(self, **kwargs: Any) -> Any:
        return self.function(**kwargs)

    @property
    def module(self) -> str:
        """The module that holds the function (known without importing it)."""
        return self.target.partition(":")[0]

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.function)

    def __repr__(self) -> str:
        return f"LazyBuilder({self.target!r}, {self.name!r})"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]
    description: str
    kind: str  # "classic" (a fixed function of the pixels) or "learned"
    score_range: tuple[float, float] | None = None
    lower_better: bool = False
    reference: str = ""
    extras: tuple[str, ...] = ()  # pip extras this model needs beyond the core install
    needs_weights: bool = False  # ships no weights: build it with weights=PATH (your own training)
    # the weights card (architecture, data, metrics, sha256), or the file it is read from on first use
    card_source: dict | str | os.PathLike = field(default_factory=dict, repr=False)

    @functools.cached_property
    def card(self) -> dict:
        """The weights card: architecture, preprocessing, data, metrics, sha256 (``{}`` when none)."""
        if isinstance(self.card_source, dict):
            return self.card_source
        from .weights import read_card  # validated, older layouts upgraded; imports no torch

        return read_card(self.card_source)


_REGISTRY: dict[str, ModelEntry] = {}
_loaded = False


def register_model(
    name: str,
    *,
    description: str,
    kind: str,
    score_range: tuple[float, float] | None = None,
    lower_better: bool = False,
    reference: str = "",
    extras: tuple[str, ...] = (),
    card: dict | str | os.PathLike | None = None,
    needs_weights: bool = False,
) -> Callable:
    """Decorator registering ``builder(**kwargs) -> ComplexityModel`` under ``name``.

    ``builder`` may also be a string ``"module:function"``: the module is imported when the model is
    first built, and ``function(name, **kwargs)`` builds it. ``card`` is a dict or the path of a card
    file, read when the card is first asked for."""
    if kind not in ("classic", "learned"):
        raise ValueError(f"kind must be 'classic' or 'learned', not {kind!r}")

    def decorator(builder: Callable | str) -> Callable | str:
        _ensure_loaded()  # a name taken by a built-in model is refused whenever it is registered
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(
            name=name,
            builder=LazyBuilder(builder, name) if isinstance(builder, str) else builder,
            description=description,
            kind=kind,
            score_range=score_range,
            lower_better=lower_better,
            reference=reference,
            extras=tuple(extras),
            card_source=dict(card) if isinstance(card, dict) else ({} if card is None else card),
            needs_weights=needs_weights,
        )
        return builder

    return decorator


def _ensure_loaded() -> None:
    """Register the models pyica ships (:mod:`pyica.models.catalog`: data only, no model code imported)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from .models.catalog import MODELS, SHIPPED_WEIGHTS

        for spec in MODELS:
            spec = dict(spec)
            name, builder = spec.pop("name"), spec.pop("builder")
            card_file = SHIPPED_WEIGHTS / f"{name}.json"
            register_model(name, card=card_file if card_file.is_file() else None, **spec)(builder)


def list_models(pattern: str | None = None, kind: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell pattern and by kind."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if kind:
        names = [n for n in names if _REGISTRY[n].kind == kind]
    return names


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; a typo gets a "did you mean" hint."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}.{hint} `pyica list` shows all models.") from None


def model_info(name: str) -> dict:
    """A JSON-serialisable description of a model (what `pyica info` prints)."""
    entry = get_entry(name)
    return {
        "name": entry.name,
        "kind": entry.kind,
        "description": entry.description,
        "lower_better": entry.lower_better,
        "score_range": list(entry.score_range) if entry.score_range else None,
        "reference": entry.reference,
        "extras": list(entry.extras),
        "needs_weights": entry.needs_weights,
        "default": entry.name == DEFAULT_MODEL,
        "card": entry.card,
    }


def create_model(name: str, device: str | None = "cpu", *, allow_unverified: bool = False, **kwargs: Any):
    """Build the model ``name`` in eval mode on ``device`` (``"auto"`` picks CUDA when present).

    Weights are loaded through :func:`pyica.weights.load_weights`, which refuses a card that records no
    sha256; ``allow_unverified=True`` accepts such weights (with a warning). It has no effect on a model
    that loads no weights (a classic measure)."""
    from .runtime import resolve_device

    entry = get_entry(name)
    if allow_unverified and "allow_unverified" in inspect.signature(entry.builder).parameters:
        kwargs["allow_unverified"] = True
    model = entry.builder(**kwargs)
    model.name = entry.name
    model.lower_better = entry.lower_better
    model.score_range = entry.score_range
    return model.to(resolve_device(device)).eval()


# --- a model from a trained weights file and its card ---------------------------------------------------

#: The architecture a card names -> the module whose models it describes (the registered builders live there).
_ARCHITECTURE_MODULES = {"effnet_ridge": "pyica.models.effnet_ridge", "cmssa": "pyica.models.cmssa",
                         "icnet": "pyica.models.icnet", "clicv2_probe": "pyica.models.clicv2_probe"}


def trained_weights_card(path) -> dict | None:
    """The card of a pyica weights file (``NAME.safetensors`` with ``NAME.json`` beside it) whose
    architecture :func:`model_from_weights` can build, else ``None`` (no card: third-party weights such
    as ICNet's ``ck.pth``, which only a named model loads). The card is read, not yet verified."""
    from pathlib import Path

    from .weights import card_path_of, read_card

    path = Path(path)
    if path.suffix != ".safetensors" or not card_path_of(path).is_file():
        return None
    card = read_card(path)
    return card if card["architecture"]["name"] in _ARCHITECTURE_MODULES else None


def model_from_weights(path, device: str | None = "cpu", *, allow_unverified: bool = False,
                       expect: str | None = None):
    """The model a trained weights file describes (``pyica score --weights runs/x/NAME.safetensors``): the
    architecture its card names, rebuilt from the card's arguments, with the file's tensors loaded through
    :func:`pyica.weights.load_weights` (sha256 checked, as every load), named after the card (``NAME``,
    e.g. what ``pyica train --name`` chose), in eval mode on ``device``.

    ``expect``: a registered model name the caller asked for (``-m``); weights of another architecture
    are refused instead of being scored under that name."""
    from pathlib import Path

    from .runtime import resolve_device
    from .weights import WeightsError, card_path_of, read_card

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if not card_path_of(path).is_file():
        raise WeightsError(f"{path}: no card {card_path_of(path).name} beside it; a pyica weights file has one")
    card = read_card(path)
    arch = card["architecture"]["name"]
    if arch not in _ARCHITECTURE_MODULES:
        raise WeightsError(f"{card_path_of(path)}: architecture {arch!r} is not a scorer pyica can build "
                           f"(known: {', '.join(sorted(_ARCHITECTURE_MODULES))})")
    if expect is not None:
        builder = get_entry(expect).builder
        family = builder.module if isinstance(builder, LazyBuilder) else builder.__module__
        if family != _ARCHITECTURE_MODULES[arch]:
            raise WeightsError(f"{path}: weights of architecture {arch}, not of {expect} ({family.rsplit('.', 1)[-1]}); "
                               "leave out -m to score with the model the card describes")
    # the model modules import this one: reached by name, as _ensure_loaded does, so no import cycle
    module = importlib.import_module(_ARCHITECTURE_MODULES[arch])
    if arch == "effnet_ridge":
        arguments = dict(card["architecture"]["arguments"])
        views = tuple(module.View(**v) for v in arguments.pop("views"))
        model = module.EffNetRidge(module.EffNetRidgeConfig(views, **arguments))
        model = model.load_head(path, allow_unverified=allow_unverified)
        model.card = card
    else:
        load = {"cmssa": "load_cmssa", "icnet": "load_icnet", "clicv2_probe": "load_probe"}[arch]
        model = getattr(module, load)(path, allow_unverified=allow_unverified)
    score = card.get("score") or {}
    model.name = card["name"]
    model.lower_better = score.get("higher") == "less complex"
    model.score_range = tuple(score["range"]) if score.get("range") else getattr(model, "score_range", None)
    return model.to(resolve_device(device)).eval()
