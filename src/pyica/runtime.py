"""Device selection and other process-wide runtime choices, including this process's place in a
``torchrun`` launch (read here only, by :func:`torchrun_env`)."""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

__all__ = ["resolve_device", "default_num_workers", "TorchrunEnv", "torchrun_env"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> CUDA if available, else Apple MPS, else CPU; anything else as given."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was requested but CUDA is not available")
    return dev


def default_num_workers() -> int:
    """DataLoader workers for scoring: one per spare core, at most 8, 0 on a 1-core machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1)) if cores > 1 else 0


class TorchrunEnv(NamedTuple):
    """This process's place in a torchrun launch; ``(0, 1, 0, 1)`` outside one."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"{name} is not set, but WORLD_SIZE > 1 (torchrun sets both)")
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer (torchrun environment variable)") from None


def torchrun_env() -> TorchrunEnv:
    """``(rank, world_size, local_rank, local_world_size)`` from torchrun's environment variables
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); ``(0, 1, 0, 1)`` unless ``WORLD_SIZE > 1``.

    The one place pyica reads them. :class:`ValueError` (one line naming the variable) when a value is
    not an integer, ``RANK`` is missing or out of range.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return TorchrunEnv(0, 1, 0, 1)
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in 0..{world - 1} (WORLD_SIZE={world})")
    return TorchrunEnv(rank, world, local_rank, local_world)
