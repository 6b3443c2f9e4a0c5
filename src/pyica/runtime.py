"""Device selection and other process-wide runtime choices, including this process's place in a
``torchrun`` launch (read here only, by :func:`torchrun_env`), how a device is named in a card
(:func:`describe_device`) and the CUDA numerics that a fitted head's features are computed under
(:func:`full_float32`)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch

__all__ = ["resolve_device", "default_num_workers", "TorchrunEnv", "torchrun_env", "describe_device",
           "full_float32"]


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


def describe_device(device: str | torch.device) -> str:
    """A device as a card names it: ``"cpu"``, ``"mps"``, or ``"cuda (NVIDIA H200)"`` (the GPU model, since
    two GPU models may run different convolution kernels)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _tf32_switches():
    """``(getter, setter)`` of the float32 precision of CUDA matmuls and cuDNN convolutions: torch's
    ``fp32_precision`` API where it has one (torch >= 2.9; mixing it with the legacy ``allow_tf32`` flags
    makes torch raise when a flag is read), else the legacy flags."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        def get():
            return matmul.fp32_precision, conv.fp32_precision

        def set_(state):
            matmul.fp32_precision, conv.fp32_precision = state

        return get, set_, ("ieee", "ieee")

    def get_legacy():
        return matmul.allow_tf32, cudnn.allow_tf32

    def set_legacy(state):
        matmul.allow_tf32, cudnn.allow_tf32 = state

    return get_legacy, set_legacy, (False, False)


@contextmanager
def full_float32() -> Iterator[None]:
    """Run CUDA float32 work in full float32 and with deterministic cuDNN kernels, restoring the
    process's settings afterwards (also on an exception).

    What a fitted head's features are computed under (:meth:`pyica.models.effnet_ridge.EffNetRidge.extract_features`):
    TF32 (cuDNN's default for convolutions on Ampere and later) keeps 10 mantissa bits, errors of about
    1e-3 that the ridge fit amplifies; cuDNN's autotuner (``benchmark``) may pick another kernel from one
    run to the next. Off, a refit on one GPU reproduces the features up to float32 rounding, as on a
    CPU. Settings are process-wide: another thread's CUDA work meanwhile runs under them too. No effect
    on CPU work."""
    get_precision, set_precision, full = _tf32_switches()
    cudnn = torch.backends.cudnn
    saved = get_precision(), cudnn.deterministic, cudnn.benchmark
    try:
        set_precision(full)
        cudnn.deterministic, cudnn.benchmark = True, False
        yield
    finally:
        set_precision(saved[0])
        cudnn.deterministic, cudnn.benchmark = saved[1], saved[2]


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
