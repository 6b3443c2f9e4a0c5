"""Weights on disk: safetensors files checked against the sha256 their JSON card records.

Shipped weights are safetensors (plain tensors, no pickled code) next to a card
``<name>.json`` (architecture, preprocessing, training data and protocol, measured metrics, sha256).
Loading verifies the hash, so a truncated or swapped file fails loudly instead of scoring wrongly.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .writers import replace_atomically

__all__ = ["sha256_file", "save_tensors", "load_tensors", "load_card_tensors"]


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` as safetensors atomically; returns the file's sha256."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    replace_atomically(path, lambda temp: save_file(tensors, temp, metadata=metadata), suffix=".safetensors")
    return sha256_file(path)


def load_tensors(path: str | os.PathLike, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file (CPU tensors), checking its sha256 when one is given."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if sha256:
        actual = sha256_file(path)
        if actual != sha256:
            raise ValueError(f"{path}: sha256 {actual} does not match the card's {sha256}; "
                             "the file is damaged or not the one the card describes")
    return load_file(str(path))



def load_card_tensors(path: str | os.PathLike, card: dict, card_file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, checked against the sha256 its card (read from ``card_file``) records under
    ``weights.sha256``; a card that records none is refused rather than trusted."""
    sha = card.get("weights", {}).get("sha256")
    if not sha:
        raise ValueError(f"{card_file}: records no sha256 for {Path(path).name}")
    return load_tensors(path, sha)
