"""Data-parallel training: the process group of a ``torchrun`` launch and what the trainers share.

Every trainer (``pyica train`` for the default model and CM-SSA, ``pyica pretrain``, the probe
trainer) runs unchanged as one process or under ``torchrun --nproc_per_node W``:

* :class:`Distributed` sets up the process group from the variables torchrun exports (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL on CUDA, gloo on CPU; each
  process takes the GPU of its ``LOCAL_RANK``. Outside torchrun it is a single process (rank 0 of 1)
  and every collective is the identity, so the trainers have one code path.
* Data: a global batch of ``B`` examples (the recipe's ``batch_size``) is split across the ``W``
  processes by striding (:func:`shard`: process ``r`` takes positions ``r, r + W, ...``), so every
  example of an epoch is used exactly once and a config means the same run on any number of
  processes; per-example work done once (feature caches) is split the same way and gathered
  (:meth:`Distributed.all_gather_dict`).
* Gradients: the trainable module is wrapped in ``DistributedDataParallel`` (:func:`wrap_ddp`), which
  averages gradients over the processes; losses are per-example means scaled by
  ``W * n_local / n_global`` (:func:`loss_scale`), so the averaged gradient is the gradient of the
  mean over the global batch even when a last batch does not split evenly.
* BatchNorm: with per-process statistics a process's batch would be normalised by the mean and
  variance of its own ``B / W`` examples, a different function from one process's batch of ``B``.
  :func:`convert_global_batchnorm` swaps BatchNorm layers for :class:`GlobalBatchNorm`, which
  normalises with the statistics of the whole global batch (an all-reduce, differentiable, on any
  backend: ``torch.nn.SyncBatchNorm`` refuses CPU tensors, so gloo runs could not use it).
* Mixed precision (:func:`autocast`, :func:`grad_scaler`): ``torch.autocast`` only on CUDA, bf16 by
  default; fp16 adds a ``GradScaler``. On CPU training is float32.

What stays on one process: logging, progress bars and every file write happen on rank 0
(``dist.main``); the others wait at a barrier where rank 0 writes what they read.
"""

from __future__ import annotations

import atexit
from contextlib import nullcontext
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..runtime import resolve_device, torchrun_env

__all__ = ["Distributed", "current", "process_device", "shard", "loss_scale", "wrap_ddp", "GlobalBatchNorm",
           "convert_global_batchnorm", "revert_global_batchnorm", "all_gather_with_grad", "all_gather_rows", "autocast",
           "grad_scaler", "AMP_DTYPES"]


def _env_world() -> int:
    return torchrun_env().world_size


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def process_device(device: str | torch.device | None = "auto") -> torch.device:
    """``device`` for this process: under torchrun a CUDA device without an index becomes
    ``cuda:LOCAL_RANK`` (one GPU per process); otherwise :func:`pyica.runtime.resolve_device`."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and _env_world() > 1:
        dev = torch.device("cuda", torchrun_env().local_rank)
    return dev


class Distributed:
    """This process's place in a torchrun launch (or a single process: rank 0 of 1).

    ``Distributed(device)`` initialises the process group when ``WORLD_SIZE > 1`` and none exists
    yet (and :meth:`close` destroys only a group it created); inside an existing group it is a view
    of it. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, device: str | torch.device | None = "auto"):
        import torch.distributed as dist

        self.created = False
        dev = process_device(device)
        if _env_world() > 1 and not _initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            self.created = True
        if _initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            env = torchrun_env()  # a group made without torchrun's variables: all ranks on this machine
            self.local_rank = env.local_rank if env.world_size > 1 else self.rank
            self.local_world = env.local_world_size if env.world_size > 1 else self.world
            self.backend = dist.get_backend()
        else:
            self.rank, self.world, self.local_rank, self.local_world, self.backend = 0, 1, 0, 1, None
        if dev.type == "cuda" and self.world > 1 and dev.index is None:
            dev = torch.device("cuda", self.local_rank)
        self.device = dev
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world={self.world}, device={self.device}, backend={self.backend})"

    def __enter__(self) -> "Distributed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs and writes."""
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must be for collectives (the GPU for NCCL, else the CPU)."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.created and _initialized():
            torch.distributed.destroy_process_group()
            self.created = False

    # --- collectives (the identity in a single process) ------------------------------------------

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one."""
        if self.world == 1:
            return bool(flag)
        t = torch.tensor([float(flag)], device=self.comm_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def all_gather_arrays(self, x: np.ndarray | torch.Tensor) -> list[np.ndarray | torch.Tensor]:
        """Every rank's ``x``, in rank order; the first dimension may differ between ranks (the
        others and the dtype must agree, except on ranks with no rows). Returns what it was given:
        NumPy arrays, or tensors on ``x``'s device."""
        as_numpy = isinstance(x, np.ndarray)
        if self.world == 1:
            return [x]
        t = torch.from_numpy(np.ascontiguousarray(x)) if as_numpy else x.detach()
        source_device = t.device
        meta = self.all_gather_object((int(t.shape[0]) if t.ndim else -1, tuple(t.shape[1:]), str(t.dtype)))
        if any(m[0] < 0 for m in meta):
            raise ValueError("all_gather_arrays needs arrays with at least one dimension")
        filled = [m for m in meta if m[0] > 0] or meta
        trailing, dtype_name = filled[0][1], filled[0][2]
        if any(m[0] > 0 and (m[1], m[2]) != (trailing, dtype_name) for m in meta):
            raise ValueError(f"all_gather_arrays: ranks disagree on trailing shape or dtype: {meta}")
        dtype = getattr(torch, dtype_name.replace("torch.", ""))
        send_dtype = torch.uint8 if dtype == torch.bool else dtype
        rows = max(m[0] for m in meta)
        padded = torch.zeros((rows, *trailing), dtype=send_dtype, device=self.comm_device)
        if t.shape[0]:
            padded[:t.shape[0]] = t.to(self.comm_device, send_dtype)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        out = []
        for m, part in zip(meta, parts):
            part = part[:m[0]].to(dtype)
            out.append(part.cpu().numpy() if as_numpy else part.to(source_device))
        return out

    def all_gather_dict(self, local: dict[Any, np.ndarray], max_bytes: int = 256 << 20) -> dict[Any, np.ndarray]:
        """The union of every rank's ``{key: array}`` (keys picklable and disjoint between ranks;
        arrays of one dtype whose dimensions after the first agree, e.g. feature rows ``(D,)``
        or token grids ``(T_i, D)``). Used to fill a per-example cache computed in shards; sent in
        rounds of at most about ``max_bytes`` per rank."""
        if self.world == 1:
            return dict(local)
        keys = list(local)
        chunks, size = [[]], 0
        for k in keys:
            nbytes = np.asarray(local[k]).nbytes
            if chunks[-1] and size + nbytes > max_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append(k)
            size += nbytes
        rounds = max(self.all_gather_object(len(chunks)))
        merged: dict[Any, np.ndarray] = {}
        for i in range(rounds):
            merged.update(self._gather_chunk({k: local[k] for k in (chunks[i] if i < len(chunks) else [])}))
        return merged

    def _gather_chunk(self, local: dict[Any, np.ndarray]) -> dict[Any, np.ndarray]:
        keys = list(local)
        arrays = [np.asarray(local[k]) for k in keys]
        shapes = [a.shape for a in arrays]
        flat = np.concatenate([a if a.ndim else a.reshape(1) for a in arrays]) if arrays else None
        meta = self.all_gather_object((keys, shapes, None if flat is None else (flat.shape[1:], flat.dtype.str)))
        ref = next((m[2] for m in meta if m[2] is not None), None)
        if ref is None:
            return {}
        if flat is None:
            flat = np.zeros((0, *ref[0]), dtype=np.dtype(ref[1]))
        merged: dict[Any, np.ndarray] = {}
        for (rank_keys, rank_shapes, _), part in zip(meta, self.all_gather_arrays(flat)):
            start = 0
            for key, shape in zip(rank_keys, rank_shapes):
                rows = shape[0] if len(shape) else 1
                merged[key] = part[start:start + rows].reshape(shape)
                start += rows
        return merged


_CURRENT: Distributed | None = None


def current(device: str | torch.device | None = "auto") -> Distributed:
    """The process group the trainers use: a view of the one that exists, or, under torchrun
    (``WORLD_SIZE > 1``) with none yet, a new one that lives until the interpreter exits. In a
    plain process: rank 0 of 1."""
    global _CURRENT
    if _env_world() > 1 and not _initialized():
        _CURRENT = Distributed(device)
        atexit.register(_CURRENT.close)
        return _CURRENT
    return Distributed(device)


# --- data ------------------------------------------------------------------------------------------

def shard(items: Sequence, rank: int, world: int) -> Sequence:
    """This process's share of ``items``: positions ``rank, rank + world, ...`` (disjoint, together
    everything, no padding: nothing counts twice)."""
    return items[rank::world]


def loss_scale(n_local: int, n_global: int, world: int) -> float:
    """Factor for a per-example mean loss over ``n_local`` of a global batch of ``n_global``, so
    that DDP's average of the processes' gradients is the gradient of the global mean."""
    return world * n_local / n_global if n_global else 0.0


# --- models ----------------------------------------------------------------------------------------

def wrap_ddp(module: nn.Module, device: torch.device, *, find_unused_parameters: bool = False,
             **options: Any) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` (gradients averaged over the processes) when the
    process group has several processes, else ``module`` itself. By default buffers are not broadcast
    every step: with :class:`GlobalBatchNorm` they are identical on every process anyway; ``options``
    go to ``DistributedDataParallel`` (pretraining broadcasts them, as DDP does by default)."""
    if not (_initialized() and torch.distributed.get_world_size() > 1):
        return module
    options = {"broadcast_buffers": False, **options}
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters, **options)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class _AllGather(torch.autograd.Function):
    """``(W, *x.shape)`` stack of every process's ``x`` (same shape everywhere); the gradient of a
    process's ``x`` is the sum over processes of the gradients of its slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = torch.distributed.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        torch.distributed.all_gather(parts, x.contiguous())
        ctx.rank = torch.distributed.get_rank()
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank]


def _group_size() -> int:
    return torch.distributed.get_world_size() if _initialized() else 1


def all_gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's rows of ``x`` concatenated in rank order (row counts may differ), with
    gradients flowing back to each process's own rows; and the offset of this process's rows.
    In a single process: ``(x, 0)``. Used for an in-batch softmax over the global batch."""
    if _group_size() == 1:
        return x, 0
    counts = torch.tensor([x.shape[0]], device=x.device if x.device.type == "cuda" else "cpu")
    all_counts = [torch.zeros_like(counts) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(all_counts, counts)
    sizes = [int(c.item()) for c in all_counts]
    padded = F.pad(x, (0, 0) * (x.ndim - 1) + (0, max(sizes) - x.shape[0]))
    stacked = _AllGather.apply(padded)
    rank = torch.distributed.get_rank()
    return torch.cat([stacked[r, :n] for r, n in enumerate(sizes)]), sum(sizes[:rank])


@torch.no_grad()
def all_gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's rows of ``x`` concatenated in rank order (row counts may differ), without
    gradient (MoCo's ``concat_all_gather`` for the momentum keys); and the offset of this process's
    rows. In a single process: ``(x, 0)``, the very tensor."""
    if _group_size() == 1:
        return x, 0
    x = x.detach()
    world = torch.distributed.get_world_size()
    counts = torch.tensor([x.shape[0]], device=x.device if x.device.type == "cuda" else "cpu")
    all_counts = [torch.zeros_like(counts) for _ in range(world)]
    torch.distributed.all_gather(all_counts, counts)
    sizes = [int(c.item()) for c in all_counts]
    padded = F.pad(x, (0, 0) * (x.ndim - 1) + (0, max(sizes) - x.shape[0])).contiguous()
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    rank = torch.distributed.get_rank()
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sum(sizes[:rank])


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch: the per-channel sum and
    then the sum of squared deviations are all-reduced over the processes (differentiably, in
    float64), so ``W`` processes with ``B / W`` examples each normalise exactly as one process
    with ``B`` would, on CPU (gloo) as on GPU. Running statistics are updated with the global
    mean and unbiased variance, as ``nn.BatchNorm*d`` does, and are the same on every process.
    In eval mode, or without a process group, it is the plain BatchNorm it replaced."""

    def __init__(self, *args, original: type = nn.BatchNorm1d, **kwargs):
        super().__init__(*args, **kwargs)
        self.original = original

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_stats = self.training or self.running_mean is None
        if not batch_stats or _group_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xd = x.double()
        local = torch.cat([xd.sum(dims), xd.new_tensor([x.numel() / max(1, x.shape[1])])])
        total = _AllReduceSum.apply(local)
        count = total[-1].detach()
        mean = total[:-1] / count
        centered = xd - mean.view(shape)
        var = _AllReduceSum.apply((centered * centered).sum(dims)) / count
        y = (centered * torch.rsqrt(var + self.eps).view(shape)).to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                n = float(count)
                unbiased = var.detach() * (n / (n - 1)) if n > 1 else var.detach()
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        return y


def _swap_batchnorm(module: nn.Module, make) -> nn.Module:
    replacement = make(module)
    if replacement is not None:
        return replacement
    for name, child in module.named_children():
        new = _swap_batchnorm(child, make)
        if new is not child:
            setattr(module, name, new)
    return module


def _moved(old: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` holding ``old``'s very parameter and buffer objects (optimisers keep working)."""
    for name, p in old.named_parameters(recurse=False):
        setattr(new, name, p)
    for name, b in old.named_buffers(recurse=False):
        setattr(new, name, b)
    new.train(old.training)
    return new


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by a :class:`GlobalBatchNorm` sharing its
    parameters and buffers (same state-dict keys); returns the module (a new one when ``module``
    itself is a BatchNorm). Undo with :func:`revert_global_batchnorm`."""
    def make(m):
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, (GlobalBatchNorm, nn.SyncBatchNorm)):
            return _moved(m, GlobalBatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                                             original=type(m)))
        return None

    return _swap_batchnorm(module, make)


def revert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_global_batchnorm` (the original BatchNorm classes, same tensors)."""
    def make(m):
        if isinstance(m, GlobalBatchNorm):
            return _moved(m, m.original(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats))
        return None

    return _swap_batchnorm(module, make)


# --- mixed precision -------------------------------------------------------------------------------

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(device: torch.device, enabled: bool, dtype: str = "bfloat16"):
    """``torch.autocast`` in ``dtype`` on CUDA when ``enabled``; a no-op elsewhere (CPU stays float32)."""
    if not enabled or device.type != "cuda":
        return nullcontext()
    if dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, not {dtype!r}")
    return torch.autocast("cuda", dtype=AMP_DTYPES[dtype])


def grad_scaler(device: torch.device, enabled: bool, dtype: str = "bfloat16") -> torch.amp.GradScaler:
    """The loss scaler fp16 needs (bf16 has float32's range and needs none); a disabled scaler,
    whose ``scale``/``step``/``update`` are plain pass-throughs, otherwise."""
    on = bool(enabled) and device.type == "cuda" and dtype == "float16"
    return torch.amp.GradScaler("cuda" if on else "cpu", enabled=on)
