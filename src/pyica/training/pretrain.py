"""``pyica pretrain CONFIG``: self-supervised pretraining of an image encoder (CLICv2) on unlabeled images.

Pretraining learns an encoder from images alone; a complexity model is then trained on top of the
frozen encoder ("probing"). A config is a JSON file (see ``configs/clicv2/``); paths in it are
relative to the config file::

    {"method": "clicv2",
     "model": {...},                       # CLICv2Config fields
     "data": {"sources": ["../../data/ic1m/shards/ic1m-{000000..000149}.tar"],   # folders, CSVs, shards
              "image_size": 224, "exclude_manifest": null},    # CSV of images never to train on
     "optim": {"lr": 0.003, "base_batch": 2048, "batch_size": 2048, "weight_decay": 0.05,
               "betas": [0.9, 0.95], "epochs": 300, "warmup_epochs": 40,
               "samples_per_epoch": null, "clip_grad": null, "min_lr": 0.0},
     "seed": 0, "amp": true, "checkpoint_every": 500, "log_every": 10,
     "sync_bn": false,                     # multi-GPU CUDA: BatchNorm statistics over all processes
     "output_dir": "../../runs/clicv2_vit_b32"}

Recipe (methods.md 2.2, CLICv2): AdamW, betas (0.9, 0.95), weight decay 0.05 on weight matrices
only (no decay on biases, normalisation weights, positional embeddings and cls/mask tokens, the
MAE / MoCo v3 convention), learning rate ``lr * batch_size / base_batch`` (the linear scaling rule:
the paper's 0.003 is for a batch of 2048), linear warm-up over ``warmup_epochs`` then cosine decay to
``min_lr``, both per step. ``batch_size`` is the **global** batch: with ``torchrun`` each of the
``W`` processes takes ``batch_size / W`` images a step, so a config means the same run on any number
of GPUs. An epoch is ``samples_per_epoch`` (default: all images) // ``batch_size`` steps.

Multi-GPU: ``torchrun --nproc_per_node 4 -m pyica pretrain CONFIG``. The process group is set up from
the ``RANK``/``WORLD_SIZE`` variables torchrun exports (NCCL on CUDA, gloo on CPU; see
:mod:`pyica.training.distributed`, shared by every trainer), the model is
wrapped in ``DistributedDataParallel``, the data stream gives every rank its own disjoint part, and
only rank 0 writes checkpoints, logs and the encoder.

Outputs in ``output_dir``: ``last.pt`` (checkpoint, every ``checkpoint_every`` steps and at the end),
``log.jsonl`` (the training loop's metrics log, the rows ``pyica train`` writes to ``metrics.jsonl``,
see :mod:`pyica.training.loop`: a ``"kind": "step"`` row every ``log_every`` steps with the loss and its
parts, lr and images/s, and a ``"kind": "epoch"`` row after every epoch with the epoch's mean loss and
parts, lr and seconds; ``fit`` is ``"pretraining"``; a resume drops the rows after its checkpoint's step),
TensorBoard scalars in ``tensorboard/`` when tensorboard is installed, and at the end
``encoder.safetensors`` (the query encoder, what probing uses) with its card ``encoder.json``.

Exact resume: ``last.pt`` holds the model and optimiser states, the step, the data stream's state
``(epoch, positions consumed)`` and the Python/NumPy/torch RNG states, all as tensors and plain
containers (it loads with ``torch.load(weights_only=True)``). The data stream's order and crops are
functions of ``(seed, epoch, position)`` only (see :mod:`pyica.data.streams`), and the generator
handed to the model is re-seeded before every step from ``(seed, rank, step)``, so a resumed run
computes on CPU bit for bit the losses the uninterrupted run computed (on CUDA, up to the
non-determinism of cuDNN and atomics).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import platform
import random
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ..weights import save_weights
from . import loop
from .distributed import Distributed
from .config import check_types, read_json_config, schema_error
from .loop import Batch, LoopSettings
from .resume import CheckpointFile

__all__ = ["pretrain", "load_pretrain_config", "lr_at", "param_groups", "build_optimizer", "BUILDERS",
           "CHECKPOINT", "ENCODER", "CARD", "LOG"]

log = logging.getLogger(__name__)

CHECKPOINT, ENCODER, CARD, LOG = "last.pt", "encoder.safetensors", "encoder.json", "log.jsonl"
_FORMAT = "pyica.pretrain/1"

_OPTIM_DEFAULTS = {"lr": 0.003, "base_batch": 2048, "batch_size": 64, "weight_decay": 0.05, "betas": [0.9, 0.95],
                   "eps": 1e-8, "epochs": 300, "warmup_epochs": 40, "min_lr": 0.0, "clip_grad": None,
                   "samples_per_epoch": None}
_DATA_DEFAULTS = {"image_size": None, "exclude_manifest": None, "jpeg_draft": True, "max_pixels": None}
_TOP_DEFAULTS = {"method": "clicv2", "model": {}, "seed": 0, "amp": True, "checkpoint_every": 500, "log_every": 10,
                 "find_unused_parameters": False, "sync_bn": False}

#: Names (or name parts) of parameters that get no weight decay besides every 1-D tensor.
NO_DECAY_NAMES = ("pos_embed", "position_embedding", "pos_emb", "cls_token", "mask_token", "dist_token",
                  "register_tokens", "relative_position_bias_table")


# --- config ------------------------------------------------------------------------------------------

def _build_clicv2(model_config: dict) -> nn.Module:
    from ..models.clicv2 import CLICv2, CLICv2Config

    return CLICv2(CLICv2Config(**model_config))


#: ``method`` -> builder taking the config's ``model`` dict.
BUILDERS: dict[str, Callable[[dict], nn.Module]] = {"clicv2": _build_clicv2}


def _model_schema(method: str):
    """The dataclass a method's ``model`` section fills (checked before anything runs), or None."""
    if method == "clicv2":
        from ..models.clicv2 import CLICv2Config

        return CLICv2Config
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _DataSchema(_Strict):
    sources: str | list[str] | None = None
    image_size: int | None = Field(None, ge=1)
    exclude_manifest: str | None = None
    jpeg_draft: bool = True
    max_pixels: int | None = Field(None, ge=1)
    samples_per_epoch: int | None = Field(None, ge=1)  # older configs put it here; optim.samples_per_epoch wins


class _OptimSchema(_Strict):
    lr: float
    base_batch: int
    batch_size: int
    weight_decay: float = Field(ge=0)
    betas: tuple[float, float]
    eps: float = Field(gt=0)
    epochs: float
    warmup_epochs: float
    min_lr: float = Field(ge=0)
    clip_grad: float | None = None
    samples_per_epoch: int | None = Field(None, ge=1)


class _PretrainSchema(_Strict):
    """A ``pyica pretrain`` config, defaults filled in: an unknown key at any level or a wrong type is refused."""

    method: str
    note: str | None = None
    model: dict[str, Any]
    data: _DataSchema
    optim: _OptimSchema
    seed: int
    amp: bool
    checkpoint_every: int
    log_every: int
    find_unused_parameters: bool
    sync_bn: bool
    output_dir: str | None = None


def load_pretrain_config(config: str | os.PathLike | dict, *, sources: list[str] | None = None,
                         output_dir: str | None = None, check_method: bool = True) -> dict[str, Any]:
    """The config with defaults filled in and paths made absolute (relative to the config file,
    or to the current folder for a dict). ``sources``/``output_dir`` replace the config's.

    Validated before anything runs: an unknown key (top level, ``data``, ``optim``, the method's
    ``model``), a value of the wrong type or an unknown ``method`` (unless ``check_method`` is false:
    a caller that brings its own builder) is one line naming the file and the key."""
    if isinstance(config, dict):
        raw, base, name = json.loads(json.dumps(config)), Path.cwd(), "<dict>"
    else:
        path = Path(config)
        raw = read_json_config(path)
        base, name = path.resolve().parent, path.name

    def absolute(p: str) -> str:
        return p if os.path.isabs(p) else os.path.normpath(str(base / p))

    for section in ("data", "optim", "model"):
        if not isinstance(raw.get(section, {}), dict):
            raise ValueError(f"{name}: {section}: a section is a JSON object, not {type(raw[section]).__name__}")
    cfg = {**_TOP_DEFAULTS, **raw}
    cfg["data"] = {**_DATA_DEFAULTS, **raw.get("data", {})}
    cfg["optim"] = {**_OPTIM_DEFAULTS, **raw.get("optim", {})}
    try:
        _PretrainSchema.model_validate(cfg)
    except ValidationError as err:
        raise schema_error(name, err) from None
    if check_method and cfg["method"] not in BUILDERS:
        raise ValueError(f"{name}: method: unknown method {cfg['method']!r} (pyica pretrain knows: {', '.join(BUILDERS)})")
    schema = _model_schema(cfg["method"])
    if schema is not None:
        from dataclasses import fields

        known = {f.name for f in fields(schema)}
        unknown = sorted(set(cfg["model"]) - known)
        if unknown:
            raise ValueError(f"{name}: model: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        check_types(schema, cfg["model"], f"{name}: model")
    data, optim = cfg["data"], cfg["optim"]
    if sources:
        data["sources"] = [os.path.abspath(s) for s in sources]
    elif data.get("sources"):
        data["sources"] = [absolute(s) for s in ([data["sources"]] if isinstance(data["sources"], str) else data["sources"])]
    else:
        raise ValueError(f"{name}: data.sources is missing (image folders, CSV manifests or tar shards)")
    if data.get("exclude_manifest"):
        data["exclude_manifest"] = absolute(data["exclude_manifest"])
    if output_dir:
        cfg["output_dir"] = os.path.abspath(output_dir)
    elif cfg.get("output_dir"):
        cfg["output_dir"] = absolute(cfg["output_dir"])
    else:
        raise ValueError(f"{name}: output_dir is missing")
    if data.get("samples_per_epoch") and not optim.get("samples_per_epoch"):
        optim["samples_per_epoch"] = data["samples_per_epoch"]
    if data["image_size"] is None:
        data["image_size"] = int(cfg["model"].get("image_size", 224))
    for key in ("batch_size", "base_batch", "epochs"):
        if not optim[key] or optim[key] <= 0:
            raise ValueError(f"{name}: optim.{key} must be positive, not {optim[key]!r}")
    if not 0 <= optim["warmup_epochs"] <= optim["epochs"]:
        raise ValueError(f"{name}: optim.warmup_epochs must be in 0..epochs")
    if cfg["checkpoint_every"] <= 0 or cfg["log_every"] <= 0:
        raise ValueError(f"{name}: checkpoint_every and log_every must be positive")
    cfg["config_file"] = name
    return cfg


# --- optimisation ------------------------------------------------------------------------------------

def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up ``peak * (step + 1) / warmup_steps``,
    then cosine from ``peak`` down to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _no_decay(name: str, p: torch.Tensor, extra: set[str]) -> bool:
    last = name.rsplit(".", 1)[-1]
    return p.ndim <= 1 or last == "bias" or name in extra or any(k in name for k in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups: decayed weight matrices, and the rest (1-D tensors:
    biases, norms; positional embeddings, cls/mask tokens; names from ``model.no_weight_decay()``)."""
    extra = set(model.no_weight_decay()) if callable(getattr(model, "no_weight_decay", None)) else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _no_decay(name, p, extra) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: nn.Module, optim: dict, peak_lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (fused kernels on CUDA)."""
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(param_groups(model, optim["weight_decay"]), lr=peak_lr, betas=tuple(optim["betas"]),
                             eps=optim["eps"], **extra)


# --- RNG (the states saved in checkpoints: pyica.training.resume.rng_state) ----------------------------

def _step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the model's generator at ``step`` on ``rank``: a function of nothing else."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# --- distributed (the process group: pyica.training.distributed.Distributed) ------------------------

def _default_workers(local_world: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(1, local_world) - 1))


# --- the loop ----------------------------------------------------------------------------------------

def _exclude_paths(manifest: str | None) -> set[str]:
    if not manifest:
        return set()
    from ..inputs import UnreadableInput, iter_image_paths

    if not Path(manifest).is_file():
        raise FileNotFoundError(f"{manifest}: exclude_manifest not found")
    paths = set()
    for path in iter_image_paths([manifest]):
        if isinstance(path, UnreadableInput):  # a partial exclusion would let test images into pretraining
            raise ValueError(f"exclude_manifest {path}: {path.reason}")
        paths.add(path)
    return paths


def pretrain(config: str | os.PathLike | dict, *, resume: bool = False, max_steps: int | None = None,
             build_model: Callable[[dict], nn.Module] | None = None, device: str | torch.device = "auto",
             num_workers: int | None = None, progress: bool = True, sources: list[str] | None = None,
             output_dir: str | None = None) -> dict[str, Any]:
    """Run a pretraining config (module doc); returns a summary (steps, loss, files written).

    Args:
        config: JSON config path, or the config as a dict (its paths relative to the current folder).
        resume: continue from ``output_dir/last.pt`` when it exists (else start fresh). Without it an
            existing ``last.pt`` is an error, so that a finished or running job is never overwritten.
        max_steps: stop once the global step count reaches this (the schedule still spans the whole
            config); a checkpoint, the encoder and its card (``finished: false``) are written.
        build_model: ``model_config -> nn.Module`` instead of the config method's builder (tests).
        device: ``auto``, ``cpu``, ``cuda``, ...; under torchrun each process takes its local GPU.
        num_workers: DataLoader workers per process (default: spare cores, at most 8).
        progress: show a progress bar (rank 0).
        sources, output_dir: replace the config's data sources / output folder.
    """
    cfg = load_pretrain_config(config, sources=sources, output_dir=output_dir, check_method=build_model is None)
    dist = Distributed(device)
    try:
        return _run(cfg, dist, resume=resume, max_steps=max_steps, build_model=build_model,
                    num_workers=num_workers, progress=progress)
    finally:
        dist.close()


def _run(cfg: dict, dist: Distributed, *, resume: bool, max_steps: int | None, build_model, num_workers, progress) -> dict:
    from ..data.streams import UnlabeledImages

    t_start = time.perf_counter()
    started = datetime.now(timezone.utc)
    out = Path(cfg["output_dir"])
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another output_dir")
    device, seed, optim_cfg, data_cfg = dist.device, int(cfg["seed"]), cfg["optim"], cfg["data"]

    global_batch = int(optim_cfg["batch_size"])
    if global_batch % dist.world:
        raise ValueError(f"optim.batch_size {global_batch} is not divisible by the {dist.world} processes")
    per_rank = global_batch // dist.world
    stream = UnlabeledImages(
        data_cfg["sources"], data_cfg["image_size"], seed=seed, exclude=_exclude_paths(data_cfg["exclude_manifest"]),
        batch_size=per_rank, drop_last=True, samples_per_epoch=optim_cfg["samples_per_epoch"], rank=dist.rank,
        world_size=dist.world, max_pixels=data_cfg["max_pixels"], jpeg_draft=data_cfg["jpeg_draft"])
    steps_per_epoch = stream.num_samples // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{stream.num_samples} images per epoch are fewer than one batch of {global_batch}")
    total_steps = int(round(optim_cfg["epochs"] * steps_per_epoch))
    warmup_steps = int(round(optim_cfg["warmup_epochs"] * steps_per_epoch))
    peak_lr = optim_cfg["lr"] * global_batch / optim_cfg["base_batch"]
    stop_at = total_steps if max_steps is None else min(total_steps, int(max_steps))
    if dist.main:
        log.info("pretraining on %s: %d images per epoch, %d steps per epoch of %d images, %d steps, peak lr %.3g",
                 device, stream.num_samples, steps_per_epoch, global_batch, total_steps, peak_lr)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    builder = build_model or BUILDERS.get(cfg["method"])
    if builder is None:
        raise ValueError(f"unknown method {cfg['method']!r}; known: {', '.join(BUILDERS)}")
    model = builder(dict(cfg["model"])).to(device)
    task = _PretrainTask(model, build_optimizer(model, optim_cfg, peak_lr, device), stream, cfg, dist,
                         steps_per_epoch=steps_per_epoch, total_steps=total_steps, warmup_steps=warmup_steps,
                         peak_lr=peak_lr, stop_at=stop_at, workers=_default_workers(dist.local_world)
                         if num_workers is None else int(num_workers))
    if resume and not ckpt_path.exists() and dist.main:
        log.info("no checkpoint in %s: starting from step 0", out)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    settings = LoopSettings(
        epochs=max(1, math.ceil(total_steps / steps_per_epoch)), amp=bool(cfg["amp"]), clip_grad=optim_cfg["clip_grad"],
        global_batchnorm=bool(cfg["sync_bn"]), find_unused_parameters=bool(cfg["find_unused_parameters"]),
        ddp_options={"broadcast_buffers": True, "gradient_as_bucket_view": True},
        checkpoint_every=int(cfg["checkpoint_every"]), max_steps=stop_at, stop_on_signal=True,
        progress=progress, description="pretraining", metrics_log=out / LOG, log_every=int(cfg["log_every"]))
    try:
        fit = loop.run(task, settings, device=device, checkpoint=CheckpointFile(ckpt_path, resume=resume))
    finally:
        task.close()
    step = fit.steps
    seconds = time.perf_counter() - t_start
    summary = {"steps": step, "total_steps": total_steps, "finished": step >= total_steps,
               "epochs_done": round(step / steps_per_epoch, 4), "samples_seen": step * global_batch,
               "final_loss": task.last_loss, "final_parts": task.last_parts,
               "resumed_from": task.resumed_from, "stopped_by_signal": fit.stopped_by_signal,
               "seconds": round(seconds, 3), "seconds_total": round(task.elapsed_before + seconds, 3),
               "world_size": dist.world, "output_dir": str(out), "checkpoint": str(ckpt_path)}
    if dist.main:
        summary.update(_write_encoder(model, cfg, stream, summary, dist, device, started, steps_per_epoch,
                                      warmup_steps, peak_lr, global_batch))
    dist.barrier()
    return summary


class _PretrainTask:
    """Pretraining for :func:`pyica.training.loop.run`: an epoch is ``steps_per_epoch`` batches of the
    unlabeled stream (which starts at any position: its order and crops are functions of
    ``(seed, epoch, position)``), the model's generator is re-seeded from ``(seed, rank, step)`` before
    every step, AdamW with warm-up + cosine per step, the model's ``momentum_update`` after every update;
    its ``on_step`` keeps the run's statistics and stops on a non-finite loss (the loop writes ``log.jsonl``)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, stream, cfg: dict, dist: Distributed, *,
                 steps_per_epoch: int, total_steps: int, warmup_steps: int, peak_lr: float, stop_at: int,
                 workers: int):
        self.module, self.optimizer, self.stream, self.cfg, self.dist = model, optimizer, stream, cfg, dist
        self.steps_per_epoch, self.total_steps, self.warmup_steps = steps_per_epoch, total_steps, warmup_steps
        self.peak_lr, self.stop_at, self.workers = peak_lr, stop_at, workers
        self.seed, self.global_batch = int(cfg["seed"]), int(cfg["optim"]["batch_size"])
        self.device = dist.device
        self.generator = torch.Generator(device=self.device)
        self.last_loss: float | None = None
        self.last_parts: dict[str, float] = {}
        self.elapsed_before, self.resumed_from, self.t_start = 0.0, None, time.perf_counter()
        self.position = (0, 0)  # (stream epoch, samples consumed in it) after the last step

    # --- the loop's task ---------------------------------------------------------------------------

    def epoch_batches(self, epoch: int, dist, skip: int = 0):
        self.stream.set_state(epoch - 1, skip * self.global_batch)
        loader = torch.utils.data.DataLoader(
            self.stream, batch_size=None, num_workers=self.workers, pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers > 0 else None, persistent_workers=False)
        done = skip
        for batch in itertools.islice(loader, self.steps_per_epoch - skip):
            step = (epoch - 1) * self.steps_per_epoch + done
            done += 1
            if batch.shape[0] == 0:
                if dist.world > 1:
                    raise RuntimeError(f"step {step + 1}: every image of this process's batch was unreadable")
                yield Batch(None, 0, 0)
            else:
                yield Batch((step, batch), batch.shape[0], self.global_batch)
        if done < self.steps_per_epoch:  # the stream ended early (cannot happen with a fixed index)
            log.warning("epoch %d ended after %d of %d steps", epoch - 1, done, self.steps_per_epoch)

    def loss(self, net, batch: Batch):
        step, pixels = batch.data
        self.generator.manual_seed(_step_seed(self.seed, self.dist.rank, step))
        images = pixels.to(self.device, non_blocking=True).float().div_(255.0)
        return net(images, self.generator)

    def learning_rate(self, step: int, epoch: int) -> float:  # noqa: ARG002
        return lr_at(step, self.peak_lr, self.warmup_steps, self.total_steps, self.cfg["optim"]["min_lr"])

    def validate(self) -> None:
        return None

    def after_step(self) -> None:
        if callable(getattr(self.module, "momentum_update", None)):
            self.module.momentum_update()

    def trainable_state(self) -> dict:
        return self.module.state_dict()

    def load_trainable_state(self, state: dict) -> None:
        self.module.load_state_dict(state)

    def state(self) -> dict:
        epoch, consumed = self.position
        return {"data": {"epoch": epoch, "consumed": consumed, "seed": self.seed, "global_batch": self.global_batch,
                         "samples_per_epoch": self.stream.num_samples},
                "scheduler": {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                              "peak_lr": self.peak_lr},
                "generator": self.generator.get_state(), "world_size": self.dist.world,
                "elapsed_s": self.elapsed_before + time.perf_counter() - self.t_start,
                "last_loss": self.last_loss, "last_parts": dict(self.last_parts), "config": dict(self.cfg)}

    def load_state(self, state: dict) -> None:
        data = state["data"]
        _check_compatible(data, self.global_batch, self.stream.num_samples, self.seed)
        self.position = (int(data["epoch"]), int(data["consumed"]))
        self.resumed_from = self.position[0] * self.steps_per_epoch + self.position[1] // self.global_batch
        self.elapsed_before = float(state.get("elapsed_s") or 0.0)
        if state.get("last_loss") is not None:
            self.last_loss, self.last_parts = float(state["last_loss"]), dict(state.get("last_parts") or {})
        if state.get("generator") is not None and self.dist.rank == 0:  # rank 0's; re-seeded every step anyway
            try:
                self.generator.set_state(state["generator"])
            except RuntimeError:  # saved on another device type: harmless, see _step_seed
                pass
        if self.dist.main:
            log.info("resumed %s at step %d (epoch %d, %d samples into it)", Path(self.cfg["output_dir"]) / CHECKPOINT,
                     self.resumed_from, *self.position)

    # --- after every step (the loop calls on_step) -----------------------------------------------------

    def on_step(self, step: int, epoch: int, lr, loss, parts, batch) -> None:  # noqa: ARG002
        if loss is not None:
            self.last_loss, self.last_parts = float(loss.detach()), parts
        epoch_index, steps_into_epoch = divmod(step, self.steps_per_epoch)
        self.position = (epoch_index, steps_into_epoch * self.global_batch)
        if self.dist.main and self.last_loss is not None and not math.isfinite(self.last_loss) and \
                (step % int(self.cfg["log_every"]) == 0 or step == self.stop_at):
            raise RuntimeError(f"loss is {self.last_loss} at step {step}; the last checkpoint is "
                               f"{Path(self.cfg['output_dir']) / CHECKPOINT}")

    def close(self) -> None:
        pass


def _check_compatible(data: dict, global_batch: int, num_samples: int, seed: int) -> None:
    if data["global_batch"] != global_batch or data["samples_per_epoch"] != num_samples or data["seed"] != seed:
        log.warning("the checkpoint was made with batch %s, %s samples per epoch and seed %s; this run has %s, %s "
                    "and %s: the data order will not continue exactly", data["global_batch"],
                    data["samples_per_epoch"], data["seed"], global_batch, num_samples, seed)


def _write_encoder(model, cfg, stream, summary, dist, device, started, steps_per_epoch, warmup_steps, peak_lr,
                   global_batch) -> dict:
    out = Path(cfg["output_dir"])
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise AttributeError(f"{type(model).__name__} has no .encoder to save")
    tensors = {k: v.detach().to("cpu", copy=True) for k, v in encoder.state_dict().items()}
    card = {
        "name": f"{cfg['method']}_encoder",
        "architecture": {"name": f"{cfg['method']}_encoder", "method": cfg["method"], "arguments": cfg["model"],
                         "class": type(encoder).__name__},
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "training": {
            "finished": summary["finished"], "steps": summary["steps"], "total_steps": summary["total_steps"],
            "steps_per_epoch": steps_per_epoch, "warmup_steps": warmup_steps, "epochs_done": summary["epochs_done"],
            "samples_seen": summary["samples_seen"], "global_batch": global_batch, "peak_lr": peak_lr,
            "final_loss": summary["final_loss"], "final_parts": summary["final_parts"],
            "data": stream.describe(), "seconds_this_run": summary["seconds"],
            "seconds_total": summary["seconds_total"], "started_utc": started.isoformat(timespec="seconds"),
            "world_size": dist.world, "device": str(device),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "numpy": np.__version__, "machine": platform.machine()},
            "config": cfg, "log": LOG, "checkpoint": CHECKPOINT,
        },
        "use": "the frozen query encoder for probing (e.g. inside an ICNet head); load with "
               "pyica.models.clicv2_probe.load_encoder (pyica.weights.load_weights checks the sha256)",
    }
    sha = save_weights(tensors, card, out / ENCODER)["weights"]["sha256"]
    return {"encoder": str(out / ENCODER), "card": str(out / CARD), "encoder_sha256": sha}
