"""The model registry: every scorer pyica knows, by name.

Names follow timm's ``arch.tag`` convention: ``arch`` names the code, the optional ``tag`` names
the weights or variant (``effnet_lite2_ridge.savoias``). Classic measures have no tag.
Everything that scores, evaluates or benchmarks a model goes through :func:`create_model`, so every
model is treated the same way.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "ModelEntry",
    "register_model",
    "list_models",
    "get_entry",
    "model_info",
    "create_model",
    "DEFAULT_MODEL",
]

#: The model `pyica score` uses when none is named.
DEFAULT_MODEL = "effnet_lite0_within.savoias"

# Modules that register models when imported. Heavy ones import their own dependencies lazily,
# inside the builder, so listing models stays cheap.
_MODEL_MODULES = ("pyica.models.classic", "pyica.models.effnet_ridge", "pyica.models.cmssa",
                  "pyica.models.clicv2_probe", "pyica.models.icnet")


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
    card: dict = field(default_factory=dict)  # weights card (architecture, data, metrics, sha256)


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
    card: dict | None = None,
    needs_weights: bool = False,
) -> Callable:
    """Decorator registering ``builder(**kwargs) -> ComplexityModel`` under ``name``."""
    if kind not in ("classic", "learned"):
        raise ValueError(f"kind must be 'classic' or 'learned', not {kind!r}")

    def decorator(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(
            name=name,
            builder=builder,
            description=description,
            kind=kind,
            score_range=score_range,
            lower_better=lower_better,
            reference=reference,
            extras=tuple(extras),
            card=dict(card or {}),
            needs_weights=needs_weights,
        )
        return builder

    return decorator


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _MODEL_MODULES:
            importlib.import_module(module)


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
    import inspect

    from .runtime import resolve_device

    entry = get_entry(name)
    if allow_unverified and "allow_unverified" in inspect.signature(entry.builder).parameters:
        kwargs["allow_unverified"] = True
    model = entry.builder(**kwargs)
    model.name = entry.name
    model.lower_better = entry.lower_better
    model.score_range = entry.score_range
    return model.to(resolve_device(device)).eval()
