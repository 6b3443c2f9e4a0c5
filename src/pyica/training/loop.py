"""The one training loop: every pyica method that trains by gradient descent runs through :func:`run`.

A method supplies only what differs (a :class:`TrainingTask`): the module it trains, its optimiser,
the batches of an epoch (this process's share of each global batch), the loss of a batch, its learning
rate schedule, its validation score and hooks (e.g. CLICv2's momentum update after each step). The loop
owns everything else, once:

* device placement and mixed precision (``torch.autocast`` on CUDA, bf16 or fp16 with a GradScaler);
* gradient accumulation over ``accumulate`` batches and optional gradient clipping;
* ``torchrun``: BatchNorm layers normalised over the global batch
  (:func:`~pyica.training.distributed.convert_global_batchnorm`), the module in
  ``DistributedDataParallel``, each process's mean loss scaled by its share of the global batch
  (:func:`~pyica.training.distributed.loss_scale`) so that DDP's average is the global batch's gradient,
  epoch losses averaged over the processes, the validation score taken from rank 0;
* checkpoints with one key schema (:data:`CHECKPOINT_FORMAT`), written atomically by rank 0 after every
  epoch (and every ``checkpoint_every`` steps), and exact resume: the trainable tensors, the optimiser
  and GradScaler, the step, the best epoch with its tensors, the early-stopping counter, the history,
  the RNG states and the task's own state (``TrainingTask.state``); a finished fit is restored without
  training; checkpoints of pyica 0.1 (the four loops before this one) are read and continued;
* validation after each epoch and best-epoch selection (higher is better; NaN never wins; ``patience``
  epochs without a gain stop early); the best epoch's tensors are loaded at the end;
* progress (a bar with totals and ETA on rank 0), logging, and a graceful stop on SIGTERM/SIGINT for
  long runs (the step finishes, a checkpoint is written, ``--resume`` continues);
* the metrics log (:class:`MetricsLog`, rank 0): a JSONL file with a row per epoch and a row every
  ``log_every`` steps, kept consistent with the checkpoint on resume, and TensorBoard scalars beside
  it when ``torch.utils.tensorboard`` can be imported (skipped silently otherwise).

**Progress.** On rank 0 with ``progress``: one bar of steps with its total (``epochs`` x the task's
``steps_per_epoch``, capped by ``max_steps``), rate and ETA, described ``NAME epoch E/EPOCHS``, its postfix
the running loss and the last validation score; after every epoch a line above the bar:
``NAME epoch 3/10: loss 0.1234, val_srcc 0.8123 (best), lr 0.001, 12.3 s``. Without ``progress`` that
line goes to the log (INFO).

**Metrics log.** ``LoopSettings.metrics_log``, else, for a fit with a keyed checkpoint
(:class:`~pyica.training.resume.FitCheckpoints`, e.g. ``OUTPUT/checkpoints/fit-KEY.pt``), ``metrics.jsonl``
in the folder holding the checkpoints folder (the run's output folder, which outlives the checkpoints);
no checkpoint and no ``metrics_log``: no file. Every row has ``fit`` (the settings' ``description``),
``key`` (the checkpoint's key, when there is one), ``kind`` and the 1-based ``epoch`` and global ``step``
(updates done, counted from the fit's start):

* ``kind: "epoch"``, after every epoch: the task's loss parts (every pyica task reports ``loss``; CLICv2
  its terms too), means over the epoch's steps of the global batch; ``lr`` (the last step's), ``val_srcc`` (the selection score on the
  validation part, mean within-category SRCC; absent without validation), ``best_epoch`` (so far),
  ``seconds`` (the epoch's, validation included);
* ``kind: "step"``, every ``log_every`` steps (and at ``max_steps``): ``loss`` and its parts on rank 0's
  share of that batch (the task computes them anyway, so this costs a JSON line), ``lr`` and
  ``images_per_s`` (global batches since the previous step row).

A fit that resumes from its checkpoint first drops its rows of steps after the checkpoint's (written
before the kill, about to be redone), so every epoch has one row however often a run was resumed; a fit
with a checkpoint that starts afresh drops all of its earlier rows. Rows of other fits are kept.
TensorBoard: ``tensorboard/<key or fit>/`` beside the log, the same numbers as scalars ``epoch/*`` and
``step/*`` (x axis: step).

The data order is the task's business: every task draws epoch ``e``'s order from ``(seed, e)`` only, so
a resumed run trains on the batches of an uninterrupted one and, on CPU, ends bit for bit the same.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from ..progress import progress_bar, progress_line
from . import distributed
from .resume import CHECKPOINT_FORMAT, CheckpointFile, plain, rng_state, set_rng_state

__all__ = ["Batch", "TrainingTask", "LoopSettings", "LoopResult", "MetricsLog", "run", "skip_batches",
           "default_metrics_log", "CHECKPOINT_FORMAT", "METRICS_LOG"]

#: The metrics log's file name in a run's output folder (module doc).
METRICS_LOG = "metrics.jsonl"

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """This process's share of one global batch: the task's ``data`` (``None``: nothing usable, the step
    counts but nothing is updated), its size and the global batch's size (for the loss scale)."""

    data: Any
    n_local: int
    n_global: int


class TrainingTask(Protocol):
    """What a method gives the loop (see the module doc). ``module`` is settable: under torchrun the loop
    puts back the module with global BatchNorm layers, and the original ones at the end."""

    module: nn.Module
    optimizer: torch.optim.Optimizer

    def epoch_batches(self, epoch: int, dist: distributed.Distributed, skip: int = 0) -> Iterable[Batch]:
        """This process's share of each global batch of (1-based) ``epoch``, after the first ``skip``."""

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean loss over the batch (``net`` is ``module`` or its DDP wrapper) and its parts to log."""

    def learning_rate(self, step: int, epoch: int) -> float | None:
        """The lr of the ``step``-th update (0-based) in ``epoch``; ``None``: the optimiser's own."""

    def validate(self) -> float | None:
        """The selection score of the model as it is now (higher is better), or ``None``: no validation."""

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The tensors that training changes (checkpoints and the best epoch keep these)."""

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None: ...


@dataclass
class LoopSettings:
    """How the loop runs (each trainer fills it from its recipe)."""

    epochs: int
    amp: bool = False
    amp_dtype: str = "bfloat16"
    accumulate: int = 1  # batches whose gradients are summed before an update
    clip_grad: float | None = None
    patience: int | None = None
    global_batchnorm: bool = True  # under torchrun: BatchNorm over the global batch
    find_unused_parameters: bool = False
    ddp_options: dict = field(default_factory=dict)
    checkpoint_every: int | None = None  # steps; checkpoints are also written after every epoch
    max_steps: int | None = None  # stop once this many steps are done (checkpoint written)
    stop_on_signal: bool = False  # SIGTERM/SIGINT: finish the step, checkpoint, return
    progress: bool = False
    description: str = "training"
    metrics_log: str | os.PathLike | None = None  # default: see the module doc (Metrics log)
    log_every: int | None = 10  # steps between step rows of the metrics log; None: epoch rows only
    tensorboard: bool = True  # also TensorBoard scalars, when torch.utils.tensorboard imports

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.accumulate < 1:
            raise ValueError(f"epochs ({self.epochs}) and accumulate ({self.accumulate}) must be >= 1")
        if self.log_every is not None and self.log_every < 1:
            raise ValueError(f"log_every must be >= 1 or None, not {self.log_every}")
        if self.amp_dtype not in distributed.AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(distributed.AMP_DTYPES)}, not {self.amp_dtype!r}")


@dataclass
class LoopResult:
    history: list[dict]
    best_score: float  # -inf when no epoch validated
    best_epoch: int  # 0 when none was selected (the last epoch's tensors are kept)
    steps: int
    epoch: int  # epochs completed
    resumed_after_epoch: int | None = None
    finished: bool = True  # False: stopped by max_steps or a signal before the last epoch
    stopped_by_signal: bool = False

    @property
    def selected(self) -> bool:
        return self.best_epoch > 0


def skip_batches(batches: Iterable[Batch], skip: int) -> Iterator[Batch]:
    """``batches`` after the first ``skip`` (for tasks whose epochs cannot start in the middle cheaply)."""
    return itertools.islice(batches, skip, None)


class _StopFlag:
    """Set by SIGTERM (preemption) or a first Ctrl-C while ``enabled``: the loop finishes the current step,
    writes a checkpoint and returns (a checkpoint is never taken in the middle of an update). A second
    Ctrl-C interrupts at once, without a checkpoint. Signal handlers exist only in the main thread."""

    def __init__(self, enabled: bool):
        self.enabled, self.set, self._old = enabled, False, {}

    def __enter__(self):
        import threading

        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        if signum == signal.SIGINT and self.set:
            raise KeyboardInterrupt
        log.warning("%s: stopping after this step, with a checkpoint (Ctrl-C again: stop now, without one)",
                    signal.Signals(signum).name)
        self.set = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _epoch_means(parts: list[dict[str, float]], sizes: list[tuple[int, int]], dist) -> dict[str, float]:
    """Mean over the epoch's steps of each loss part of the global batch (with several processes: their
    local means weighted by their shares of the global batch)."""
    if not parts:
        return {}
    keys = list(parts[0])
    if dist.world == 1:
        return {k: float(np.mean([p[k] for p in parts])) for k in keys}
    local = torch.tensor([[p[k] * n for k in keys] for p, (n, _) in zip(parts, sizes)], dtype=torch.float64,
                         device=dist.comm_device)
    torch.distributed.all_reduce(local)
    per_step = local.cpu() / torch.tensor([float(g) for _, g in sizes], dtype=torch.float64)[:, None]
    return {k: float(per_step[:, i].mean()) for i, k in enumerate(keys)}


def default_metrics_log(checkpoint: CheckpointFile | None) -> Path | None:
    """Where a fit's metrics log goes when its settings name none (module doc): ``metrics.jsonl`` beside
    the folder of a keyed checkpoint (the run's output folder), beside an unkeyed checkpoint file, or
    ``None`` without a checkpoint."""
    if checkpoint is None:
        return None
    folder = checkpoint.path.parent
    return (folder.parent if checkpoint.key is not None else folder) / METRICS_LOG


class MetricsLog:
    """The metrics log of one fit (module doc): appends JSONL rows (flushed, one line each) and, when
    ``torch.utils.tensorboard`` imports, TensorBoard scalars. Only rank 0 makes one."""

    def __init__(self, path: str | os.PathLike, fit: str, key: str | None = None, *, tensorboard: bool = True):
        self.path, self.fit, self.key = Path(path), fit, key
        self.ident = key if key is not None else fit
        self.tensorboard, self._tb = tensorboard, None

    def _mine(self, row: dict) -> bool:
        if "fit" not in row and "key" not in row:  # rows of pyica 0.1's pretraining log: this fit's
            return True
        return row.get("key", row.get("fit")) == self.ident

    def trim(self, last_step: int) -> None:
        """Drop this fit's rows of steps after ``last_step`` (0: all of them) and anything after a torn
        last line; other fits' rows stay. The file is rewritten atomically, only if something goes."""
        if not self.path.exists():
            return
        from ..writers import replace_atomically

        keep, dropped = [], False
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                row = json.loads(line) if line.endswith("\n") else None
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                dropped = True
                break
            if self._mine(row) and int(row.get("step", 0)) > last_step:
                dropped = True
            else:
                keep.append(line)
        if dropped:
            replace_atomically(self.path, lambda temp: Path(temp).write_text("".join(keep), encoding="utf-8"))

    def open_tensorboard(self, purge_step: int | None) -> None:
        if not self.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed (or broken): skipped silently, as documented
            return
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.ident)
        try:
            self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard" / name), purge_step=purge_step)
        except Exception as err:  # never let an optional extra stop training
            log.warning("TensorBoard disabled: %s: %s", type(err).__name__, err)

    def write(self, kind: str, row: dict) -> None:
        out = {"fit": self.fit, **({"key": self.key} if self.key is not None else {}), "kind": kind, **row}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(plain(out), allow_nan=True) + "\n")
        if self._tb is not None:
            for name, value in row.items():
                if name not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{name}", float(value), int(row["step"]))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _epoch_line(settings: LoopSettings, row: dict, best_epoch: int) -> str:
    """``NAME epoch 3/10: loss 0.1234, val_srcc 0.8123 (best), lr 0.001, 12.3 s``."""
    parts = []
    for k, v in row.items():
        if k in ("epoch", "seconds", "lr", "step", "best_epoch"):
            continue
        text = f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
        if k == "val_srcc" and best_epoch == row["epoch"]:
            text += " (best)"
        parts.append(text)
    if row.get("lr") is not None:
        parts.append(f"lr {row['lr']:.3g}")
    parts.append(f"{row['seconds']:.1f} s")
    return f"{settings.description} epoch {row['epoch']}/{settings.epochs}: " + ", ".join(parts)


def run(task: TrainingTask, settings: LoopSettings, *, device: torch.device,
        checkpoint: CheckpointFile | None = None) -> LoopResult:
    """Train ``task`` for ``settings.epochs`` epochs (module doc); returns the history and the selection.

    ``checkpoint``: where this fit's checkpoint lives (read back when its ``resume`` is set). A task may
    also define ``on_step(step, epoch, lr, loss, parts, batch)``, called after every step (e.g.
    pretraining's log file and run statistics), and ``state()``/``load_state(state)`` for what its
    checkpoints keep besides the loop's."""
    dist = distributed.current(device)
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        task.load_trainable_state(saved["model"])
        if saved.get("task") is not None and callable(getattr(task, "load_state", None)):
            task.load_state(saved["task"])
        if saved["finished"]:
            if dist.main:
                log.info("%s: finished fit restored from %s", settings.description, checkpoint.path)
            return LoopResult(list(saved["history"]), float(saved["best"]["score"]), int(saved["best"]["epoch"]),
                              int(saved["step"]), int(saved["epoch"]), resumed_after_epoch=int(saved["epoch"]))

    if dist.world > 1 and settings.global_batchnorm:
        task.module = distributed.convert_global_batchnorm(task.module)
    net = distributed.wrap_ddp(task.module, device, find_unused_parameters=settings.find_unused_parameters,
                               **settings.ddp_options)
    optimizer = task.optimizer
    scaler = distributed.grad_scaler(device, settings.amp, settings.amp_dtype)
    best = (-math.inf, 0, copy.deepcopy(task.trainable_state()))
    history: list[dict] = []
    stale, step, epoch_done, epoch_step, resumed_after = 0, 0, 0, 0, None
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        if saved["best"].get("state") is not None:
            best = (float(saved["best"]["score"]), int(saved["best"]["epoch"]), saved["best"]["state"])
        history, stale = list(saved["history"]), int(saved["stale"])
        step, epoch_done, epoch_step = int(saved["step"]), int(saved["epoch"]), int(saved.get("epoch_step", 0))
        if saved.get("rng") is not None:
            set_rng_state(saved["rng"])
        resumed_after = epoch_done
        if dist.main:
            log.info("%s: resumed after epoch %d (step %d) from %s", settings.description, epoch_done, step,
                     checkpoint.path)

    metrics = None
    log_path = settings.metrics_log if settings.metrics_log is not None else default_metrics_log(checkpoint)
    if dist.main and log_path is not None:
        metrics = MetricsLog(log_path, settings.description, checkpoint.key if checkpoint is not None else None,
                             tensorboard=settings.tensorboard)
        if checkpoint is not None:  # resumed: rows after the checkpoint go; afresh: this fit's old rows go
            metrics.trim(step)
        metrics.open_tensorboard(step if saved is not None else None)

    def state(finished: bool) -> dict:
        out = {"finished": finished, "epoch": epoch_done, "epoch_step": epoch_step, "step": step,
               "model": task.trainable_state(), "history": plain(history), "stale": stale,
               "best": {"score": float(best[0]), "epoch": best[1], "state": None if finished else best[2]}}
        if not finished:
            out.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), rng=rng_state())
        if callable(getattr(task, "state", None)):
            out["task"] = plain(task.state())
        return out

    def save(finished: bool) -> None:
        if checkpoint is not None and dist.main:
            checkpoint.save(state(finished))

    stop_at = settings.max_steps
    stopped = settings.patience is not None and stale >= settings.patience
    saved_at = step
    on_step = getattr(task, "on_step", None)
    bar = _progress(settings, task, dist, epoch_done, epoch_step)
    window = [time.perf_counter(), 0]  # since the last step row: its time, global images
    last_val: float | None = None
    try:
        with _StopFlag(settings.stop_on_signal) as stop:
            for epoch in range(epoch_done + 1, settings.epochs + 1):
                if stopped or stop.set or (stop_at is not None and step >= stop_at):
                    break
                bar.set_description(f"{settings.description} epoch {epoch}/{settings.epochs}", refresh=False)
                t0 = time.perf_counter()
                task.module.train()
                parts_seen, sizes, lr, micro = [], [], None, 0
                cut_short = False
                for batch in task.epoch_batches(epoch, dist, skip=epoch_step):
                    if batch.data is not None:
                        lr = task.learning_rate(step, epoch)
                        if lr is not None:
                            for group in optimizer.param_groups:
                                group["lr"] = lr
                        with distributed.autocast(device, settings.amp, settings.amp_dtype):
                            loss, parts = task.loss(net, batch)
                        raw_loss = loss
                        if dist.world > 1:
                            loss = loss * distributed.loss_scale(batch.n_local, batch.n_global, dist.world)
                        if settings.accumulate > 1:
                            loss = loss / settings.accumulate
                        if micro == 0:
                            optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        micro += 1
                        if micro == settings.accumulate:
                            _update(optimizer, scaler, task, settings)
                            micro = 0
                        parts_seen.append(parts)
                        sizes.append((batch.n_local, batch.n_global))
                    else:
                        if dist.main:
                            log.warning("step %d: no usable image in the batch; no update", step + 1)
                        loss, raw_loss, parts = None, None, {}
                    step += 1
                    epoch_step += 1
                    window[1] += batch.n_global
                    if metrics is not None and raw_loss is not None and settings.log_every and \
                            (step % settings.log_every == 0 or step == stop_at):
                        now = time.perf_counter()
                        metrics.write("step", {"epoch": epoch, "step": step,
                                               "loss": float(parts.get("loss", float(raw_loss.detach()))),
                                               **{k: float(v) for k, v in parts.items() if k != "loss"},
                                               "lr": lr, "images_per_s": round(window[1] / max(now - window[0], 1e-9), 2)})
                        window[:] = [now, 0]
                    if dist.main and settings.progress and parts:
                        bar.set_postfix({"loss": f"{float(parts.get('loss', next(iter(parts.values())))):.4g}",
                                         **({"val_srcc": f"{last_val:.4f}"} if last_val is not None else {})},
                                        refresh=False)
                    bar.update(1)
                    if on_step is not None:
                        on_step(step, epoch, lr, loss, parts, batch)
                    if settings.checkpoint_every and step % settings.checkpoint_every == 0 and \
                            (stop_at is None or step < stop_at):
                        save(False)
                        saved_at = step
                    if settings.stop_on_signal and dist.world > 1:  # every process stops at the same step
                        flag = torch.tensor([float(stop.set)], device=dist.comm_device)
                        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                        stop.set = bool(flag.item())
                    if stop.set or (stop_at is not None and step >= stop_at):
                        cut_short = epoch_step < (getattr(task, "steps_per_epoch", None) or math.inf)
                        break
                if micro:  # the gradients of a last incomplete accumulation still count
                    _update(optimizer, scaler, task, settings)
                if cut_short:
                    break
                epoch_done, epoch_step = epoch, 0
                row = {"epoch": epoch}
                if lr is not None:
                    row["lr"] = lr
                row.update(_epoch_means(parts_seen, sizes, dist))
                row["seconds"] = round(time.perf_counter() - t0, 3)
                score = task.validate()
                if score is not None:
                    row["val_srcc"] = float(dist.broadcast_object(float(score)))
                    if np.isfinite(row["val_srcc"]) and row["val_srcc"] > best[0]:
                        best, stale = (row["val_srcc"], epoch, copy.deepcopy(task.trainable_state())), 0
                    elif np.isfinite(row["val_srcc"]):
                        stale += 1
                history.append(row)
                if dist.main:
                    last_val = row.get("val_srcc", last_val)
                    if settings.progress and last_val is not None:
                        bar.set_postfix({**({"loss": f"{row['loss']:.4g}"} if "loss" in row else {}),
                                         "val_srcc": f"{last_val:.4f}"}, refresh=False)
                    line = _epoch_line(settings, row, best[1])
                    if settings.progress:
                        progress_line(bar, line)
                    else:
                        log.info("%s", line)
                    if metrics is not None:
                        metrics.write("epoch", {**row, "step": step, "best_epoch": best[1]})
                stopped = settings.patience is not None and stale >= settings.patience
                if epoch < settings.epochs and not stopped and (stop_at is None or step < stop_at):
                    save(False)
                    saved_at = step
            finished = epoch_done >= settings.epochs or stopped
            if not finished and saved_at != step:
                save(False)
            if stop.set and dist.main:
                log.warning("stopped at step %d; continue with --resume", step)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()

    if finished and best[1] > 0:
        task.load_trainable_state(best[2])
    if dist.world > 1 and settings.global_batchnorm:
        task.module = distributed.revert_global_batchnorm(task.module)
    if finished:
        save(True)
    return LoopResult(history, float(best[0]), best[1] if finished else 0, step, epoch_done,
                      resumed_after_epoch=resumed_after, finished=finished, stopped_by_signal=stop.set)


def _update(optimizer, scaler, task, settings: LoopSettings) -> None:
    if settings.clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(task.module.parameters(), float(settings.clip_grad))
    scaler.step(optimizer)
    scaler.update()
    after = getattr(task, "after_step", None)
    if callable(after):
        after()


def _progress(settings: LoopSettings, task, dist, epoch_done: int, epoch_step: int):
    """The bar of steps: total = epochs x the task's ``steps_per_epoch`` (capped by ``max_steps``), the
    steps done before a resume counted as done."""
    per_epoch = getattr(task, "steps_per_epoch", None)
    total, done = None, 0
    if per_epoch:
        total = settings.epochs * per_epoch
        if settings.max_steps is not None:
            total = min(total, settings.max_steps)
        done = min(total, epoch_done * per_epoch + epoch_step)
    return progress_bar(total, settings.progress and dist.main, unit="step", initial=done,
                        desc=settings.description)
