"""Weights on disk: one safetensors file and one JSON card of one versioned schema, for every model.

Every pyica weights file ``<stem>.safetensors`` (plain tensors, no pickled code) has a card
``<stem>.json`` beside it. The card follows :class:`Card` (``"schema": "pyica.card/1"``): name,
architecture and the arguments that rebuild it, preprocessing, score range and direction, training
data and protocol, measured metrics, the weights file's sha256 and the pyica version that wrote it.

:func:`save_weights` is the only writer, :func:`load_weights` the only reader: it validates the card,
checks the sha256 (a truncated or swapped file fails loudly instead of scoring wrongly; a card that
records none is refused unless the caller accepts unverified weights with ``allow_unverified=True``),
refuses NaN or Inf in a floating-point tensor, and returns tensors and card. Where the tensors meet a
model, :func:`check_dtypes` refuses one whose dtype kind (float, integer, ...) is not the model's. Cards written before this schema (four family-specific layouts) are converted in
memory by :func:`upgrade_legacy_card`, so weights already on disk, the shipped ones included, keep
loading unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .version import __version__
from .writers import replace_atomically, write_json_atomic

__all__ = ["SCHEMA", "WeightsError", "Card", "sha256_file", "card_path_of", "save_weights", "read_card",
           "load_weights", "upgrade_legacy_card", "check_finite", "check_dtypes", "UNVERIFIED_HINT"]

log = logging.getLogger(__name__)

#: How a refused unverified load tells the user to accept one anyway.
UNVERIFIED_HINT = "pass allow_unverified=True (command line: --allow-unverified-weights) to load it anyway"

SCHEMA = "pyica.card/1"

if TYPE_CHECKING:  # torch is imported where tensors are read, so that reading a card needs none
    import torch


class WeightsError(ValueError):
    """A weights file or card that cannot be used; the message is one line naming the file."""


# --- the schema ------------------------------------------------------------------------------------

class _Open(BaseModel):
    # family-specific details (backbones, history, ...) ride along; the named fields are checked
    model_config = ConfigDict(extra="allow")


class Architecture(_Open):
    name: str  # the model family: effnet_ridge, cmssa, icnet, clicv2_probe, clicv2_encoder
    arguments: dict[str, Any]  # what the family's builder needs to rebuild the network


class Score(_Open):
    range: tuple[float, float] | None
    higher: Literal["more complex", "less complex"] = "more complex"
    meaning: str | None = None


class WeightsFile(_Open):
    file: str
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # None: unverifiable, refused by load_weights
    format: Literal["safetensors"] = "safetensors"


class Card(_Open):
    card_schema: Literal["pyica.card/1"] = Field(alias="schema")
    name: str
    description: str | None = None
    pyica_version: str
    created_utc: str | None = None
    architecture: Architecture
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    score: Score | None = None  # None: not a scorer (a pretrained encoder)
    training: dict[str, Any] | None = None  # data and protocol; ``fit_device``: see _check_training
    evaluation: dict[str, Any] | None = None  # measured metrics and the protocol that measured them
    licence: str | None = None  # of third-party weights inside the file, where that applies
    weights: WeightsFile

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @field_validator("training")
    @classmethod
    def _check_training(cls, training):
        # ``fit_device`` (pyica.runtime.describe_device: "cpu", "cuda (NVIDIA H200)"): where a head's
        # features were computed, which `pyica train --verify` compares with its own device. Optional:
        # cards written before it was recorded stay valid.
        if training is not None and "fit_device" in training:
            device = training["fit_device"]
            if not isinstance(device, str) or not device.strip():
                raise ValueError(f"fit_device must be a device name such as 'cpu', not {device!r}")
        return training

    def to_dict(self) -> dict[str, Any]:
        """The card as its JSON file holds it (anything JSON lacks, e.g. a numpy float32, as a string,
        as cards were always written)."""
        return json.loads(json.dumps(self.model_dump(by_alias=True), default=str))


# --- files -----------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path_of(path: str | os.PathLike) -> Path:
    """The card of a weights file (or the card itself): same stem, ``.json``."""
    return Path(path).with_suffix(".json")


def _validate(raw: Any, card_file: Path) -> Card:
    if not isinstance(raw, dict):
        raise WeightsError(f"{card_file}: a card must be a JSON object, not {type(raw).__name__}")
    if "schema" not in raw:
        raw = upgrade_legacy_card(raw, card_file)
    elif raw["schema"] != SCHEMA:
        raise WeightsError(f"{card_file}: unknown card schema {raw['schema']!r} (this pyica {__version__} reads "
                           f"{SCHEMA!r}; a newer pyica may have written it)")
    try:
        return Card.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "card"
        raise WeightsError(f"{card_file}: malformed card: {where}: {first['msg']}"
                           + (f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else "")) from None


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The validated card of ``path`` (a weights file or its card) as a dict in the current schema."""
    card_file = card_path_of(path)
    if not card_file.is_file():
        raise FileNotFoundError(f"{card_file}: the card of {Path(path).with_suffix('.safetensors').name} is "
                                "missing (it says how to build the model and holds the weights' sha256)")
    try:
        raw = json.loads(card_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{card_file}: not valid JSON ({e})") from None
    return _validate(raw, card_file).to_dict()


def save_weights(tensors: dict[str, torch.Tensor], card: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Write ``tensors`` to ``path`` (safetensors) and ``card`` beside it (``.json``), each atomically.

    ``card`` holds everything but the ``weights`` entry's file, sha256, format and tensor shapes, the
    schema and the pyica version, which are filled in here (other ``weights`` keys, e.g. ``holds``, are
    kept). It is validated before anything is written. Returns the card as written."""
    from safetensors.torch import save_file

    path = Path(path)
    card_file = card_path_of(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    card = {"schema": SCHEMA, "pyica_version": __version__,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), **card}
    card["weights"] = {**card.get("weights", {}), "file": path.name, "sha256": "0" * 64, "format": "safetensors",
                       "tensors": {k: list(v.shape) for k, v in tensors.items()}}
    _validate(card, card_file)  # a bad card fails before the weights are touched
    metadata = {"schema": SCHEMA, "name": str(card["name"]), "pyica_version": __version__}
    replace_atomically(path, lambda temp: save_file(tensors, temp, metadata=metadata), suffix=".safetensors")
    card["weights"]["sha256"] = sha256_file(path)
    card = _validate(card, card_file).to_dict()
    write_json_atomic(card_file, card)
    return card


def load_weights(path: str | os.PathLike, *, allow_unverified: bool = False
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, card)`` of a weights file (or its card): the card validated (older layouts
    upgraded), the file's sha256 checked against it, the tensors on the CPU.

    A card that records no sha256 is refused (nothing says the file is the one it describes) unless
    ``allow_unverified``; a recorded sha256 that does not match is always refused. A floating-point
    tensor holding NaN or Inf is refused (it would score NaN): :func:`check_finite`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    weights_file = path.with_suffix(".safetensors") if path.suffix == ".json" else path
    card = read_card(weights_file)
    if not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file}: weights file not found")
    recorded = card["weights"].get("sha256")
    if recorded is None:
        if not allow_unverified:
            raise WeightsError(f"{card_path_of(weights_file)}: records no sha256 for {weights_file.name}, so the "
                               f"weights cannot be verified; {UNVERIFIED_HINT}")
        log.warning("%s: loading unverified weights (the card records no sha256)", weights_file)
    else:
        actual = sha256_file(weights_file)
        if actual != recorded:
            raise WeightsError(f"{weights_file}: sha256 {actual[:16]}... does not match the card's {recorded[:16]}...; "
                               "the file is damaged or not the one the card describes")
    try:
        tensors = load_file(str(weights_file))
    except SafetensorError as e:
        raise WeightsError(f"{weights_file}: not a readable safetensors file ({e})") from None
    check_finite(tensors, weights_file)
    return tensors, card


def _kind(dtype: torch.dtype) -> str:
    import torch

    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "floating-point"
    return "bool" if dtype == torch.bool else "integer"


def check_finite(tensors: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Refuse (:class:`WeightsError`, naming ``source`` and the tensor) a floating-point or complex
    tensor holding NaN or Inf: such weights score NaN."""
    import torch

    for name, tensor in tensors.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise WeightsError(f"{source}: tensor {name!r} holds {bad} non-finite value(s) (NaN or Inf) of "
                                   f"{tensor.numel()}; the weights are damaged")


def check_dtypes(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Refuse a tensor whose dtype kind (floating-point, complex, integer, bool) differs from the model's
    tensor of that name (``expected``: its state dict); tensors of one name only in either are left to
    the caller's missing/unknown check. An integer ``num_batches_tracked`` stays integer, so it passes."""
    for name, tensor in tensors.items():
        own = expected.get(name)
        if own is not None and _kind(tensor.dtype) != _kind(own.dtype):
            raise WeightsError(f"{source}: tensor {name!r} is {tensor.dtype} ({_kind(tensor.dtype)}), the model "
                               f"expects {_kind(own.dtype)} ({own.dtype})")


# --- cards written before the schema ---------------------------------------------------------------

def upgrade_legacy_card(raw: dict[str, Any], card_file: str | os.PathLike) -> dict[str, Any]:
    """A card of one of the four layouts pyica wrote before ``pyica.card/1`` (default-model heads,
    CM-SSA, ICNet, CLICv2 probe; plus the CLICv2 pretrained encoder), in the current schema.

    Only moves fields: nothing is recomputed, and the recorded sha256 is the one checked (a card that
    records none upgrades with ``sha256: None``, which :func:`load_weights` refuses)."""
    card_file = Path(card_file)
    try:
        return _upgrade(dict(raw), card_file)
    except (KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{card_file}: malformed card of an older layout (missing or wrong {e})") from None


def _upgrade(card: dict[str, Any], card_file: Path) -> dict[str, Any]:
    weights = {"file": card_file.with_suffix(".safetensors").name, **(card.pop("weights", None) or {})}
    if not weights.get("sha256"):
        weights["sha256"] = None  # load_weights refuses it unless unverified weights are accepted
    fmt, method = card.pop("format", None), card.get("method")
    if fmt == "pyica.icnet/1":
        card.pop("method", None)
        arch = dict(card["architecture"])
        card["architecture"] = {"name": "icnet", "arguments": arch.pop("config"), "description": arch.pop("name"),
                                **arch}
        card.setdefault("score", {"range": [0.0, 1.0], "higher": "more complex"})
    elif fmt == "pyica.clicv2_probe/1":
        card.pop("method", None)
        encoder, head = dict(card.pop("encoder")), card.pop("head")
        card["architecture"] = {"name": "clicv2_probe", "arguments": {"encoder": encoder.pop("config"), "head": head},
                                "encoder": encoder}
        card.setdefault("score", {"range": [0.0, 1.0], "higher": "more complex"})
    elif method == "cmssa":
        card.pop("method")
        card["architecture"] = {"name": "cmssa", "arguments": {"encoders": card.pop("encoders"),
                                                               "config": card.pop("config")}}
    elif "model" in card and method is not None:  # `pyica pretrain`'s encoder card
        card.pop("method")
        card["architecture"] = {"name": f"{method}_encoder", "method": method, "arguments": card.pop("model"),
                                **({"class": card.pop("encoder_class")} if "encoder_class" in card else {})}
        card.setdefault("name", f"{method}_encoder")
    elif "ridge_alpha" in (card.get("architecture") or {}):
        views = (card.get("preprocessing") or {}).get("views", [])
        card["architecture"] = {"name": "effnet_ridge", **card["architecture"],
                                "arguments": {"views": [{"variant": v["backbone"], "resize": v["resize"],
                                                         "size": v["size"]} for v in views]}}
    else:
        raise WeightsError(f"{card_file}: a card without a schema and of no known older layout")
    card.setdefault("name", card_file.stem)
    card.setdefault("pyica_version", "unknown")
    card["weights"] = weights
    card["schema"] = SCHEMA
    return card
