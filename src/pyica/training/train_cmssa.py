"""Training and evaluating CM-SSA: the recipe of the paper and of its reference code.

:class:`CMSSATrainer` trains a fresh CM-SSA on a labelled dataset (``fit_dataset(train, val)``) and
scores files (``score_files``), which is all :func:`pyica.evaluation.run_protocol` needs, so CM-SSA is
evaluated by the same code as every other model. Recipe defaults are the paper's: Adam, lr 1e-4,
batch 64, 50 epochs, no weight decay, no schedule. Training crops are ``patch_size`` random crops
(with horizontal flips) of the image resized to a shorter side of ``train_short_side`` (the reference
code crops the full-resolution image). Scores are learned on the label scale mapped to [0, 1].

The epoch is chosen on the validation part when there is one (category-mean SRCC, like the default
model's hyper-parameters), with early stopping after ``patience`` epochs without gain; the reference
code chose it on the *test* set, which we do not reproduce. Without validation the last epoch is kept.

Speed: when the encoders' image trunk is frozen and cacheable (the offline pair), its output for
``train_crops`` fixed random crops per image and for every evaluation patch is computed once and
kept (in memory, and in ``cache_dir`` when given); epoch ``e`` trains on crop ``e % train_crops``.
CLIP's prompts enter every layer, so with CLIP every step runs the image encoder (a GPU's job).

Several processes (``torchrun``, see :mod:`pyica.training.distributed`): every process calls
``fit_dataset`` and ``score_files`` together. Cached trunk features and evaluation patches are
computed in strided shares and gathered; the training step (captions included) runs inside
``DistributedDataParallel``; each global batch of ``batch_size`` is split across the processes by
striding; BatchNorm layers (the offline pair's ``image_norm``) use the global batch's statistics;
the paper's in-batch caption softmax runs over the global batch's captions (gathered with their
gradients); the loss is scaled so that the averaged gradient is the global batch's; the validation
score is rank 0's. So ``W`` processes train the model one process trains with the same global
batch, up to float rounding. A last batch smaller than ``max(2, W)`` joins the one before. Only
rank 0 logs and writes. Mixed precision: ``amp`` (CUDA only), ``amp_dtype`` bf16 or fp16 (with a
GradScaler).

Crash safety: with ``checkpoint_dir`` every epoch of every fit is checkpointed atomically and
``resume=True`` continues an interrupted fit with the same data order, or skips a finished one
(:mod:`pyica.training.resume`); ``pyica train CONFIG --resume`` uses it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.dataset import ComplexityDataset, label_range
from ..inputs import iter_batches
from ..loading import load_image
from ..metrics import selection_score
from ..models.cmssa import CMSSA, CMSSAConfig, alignment_scores
from ..progress import progress_bar
from ..runtime import default_num_workers
from . import distributed, loop
from .config import Method
from .loop import Batch, LoopSettings
from .resume import FitCheckpoints, dataset_fingerprint

__all__ = ["TrainRecipe", "CMSSATrainer", "RandomCrop", "CaptionLookup", "METHOD"]

log = logging.getLogger(__name__)


@dataclass
class TrainRecipe:
    """How CM-SSA is trained (defaults: the paper's Sec. 4.2 and the reference code)."""

    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    train_short_side: int = 384
    train_crops: int = 4
    patience: int | None = 15
    amp: bool = True  # torch.autocast on CUDA (no effect on CPU)
    amp_dtype: str = "bfloat16"  # or "float16" (with a GradScaler)
    device: str = "auto"
    num_workers: int | None = None
    eval_batch_size: int = 16
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.amp_dtype not in distributed.AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(distributed.AMP_DTYPES)}, not {self.amp_dtype!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def defining(self) -> dict:
        """The fields that change a fit's result (for checkpoint keys)."""
        skip = {"device", "num_workers", "eval_batch_size", "cache_dir"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


@dataclass(frozen=True)
class RandomCrop:
    """A seeded random ``size`` crop (and coin-flip mirror) of the image resized to ``short_side``:
    the same ``(seed, index, draw)`` always gives the same crop, so cached crops are reproducible."""

    short_side: int
    size: int
    seed: int = 0

    def __call__(self, image: Image.Image, index: int, draw: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, index, draw])
        w, h = image.size
        scale = self.short_side / min(w, h)
        new = (max(self.size, round(w * scale)), max(self.size, round(h * scale)))
        image = image.convert("RGB").resize(new, Image.Resampling.BICUBIC, reducing_gap=None)
        x, y = int(rng.integers(0, new[0] - self.size + 1)), int(rng.integers(0, new[1] - self.size + 1))
        crop = image.crop((x, y, x + self.size, y + self.size))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1)


class _CropFiles(torch.utils.data.Dataset):
    """Seeded crops of ``paths``; crop ``i`` is drawn with ``keys[i]`` (default ``i``), so that a
    process's share of a list gets the crops one process would draw for the same images."""

    def __init__(self, paths: Sequence[str], crop: RandomCrop, draw: int, keys: Sequence[int] | None = None):
        self.paths, self.crop, self.draw = list(paths), crop, draw
        self.keys = list(range(len(self.paths))) if keys is None else list(keys)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.crop(load_image(self.paths[i]), self.keys[i], self.draw), None
        except Exception as err:  # a bad file must not stop training: it is skipped and reported
            return i, None, f"{self.paths[i]}: {err}"


def _collate_crops(items):
    good = [(i, x) for i, x, e in items if e is None]
    errors = [(i, e) for i, x, e in items if e is not None]
    return [i for i, _ in good], (torch.stack([x for _, x in good]) if good else None), errors


class CaptionLookup:
    """Captions by image path: exact path, resolved path, or file name when that is unique."""

    def __init__(self, captions: dict[str, str]):
        self.exact = dict(captions)
        self.resolved = {str(Path(k).resolve()): v for k, v in captions.items()}
        names: dict[str, list[str]] = {}
        for k, v in captions.items():
            names.setdefault(Path(k).name, []).append(v)
        self.by_name = {k: v[0] for k, v in names.items() if len(v) == 1}

    def __call__(self, path: str) -> str:
        for table, key in ((self.exact, path), (self.resolved, str(Path(path).resolve())), (self.by_name, Path(path).name)):
            if key in table:
                return table[key]
        raise KeyError(f"{path}: no caption (make them with `pyica caption DATASET -o captions.jsonl`)")


class _TrainingStep(torch.nn.Module):
    """One step's forward, captions included: the module that DistributedDataParallel wraps (DDP
    synchronises gradients of what runs inside its ``forward``)."""

    def __init__(self, trainer: "CMSSATrainer", model: CMSSA, from_trunk: bool, gather: bool):
        super().__init__()
        self.model, self.from_trunk = model, from_trunk
        self.__dict__["trainer"] = trainer  # a plain reference, not a submodule
        self.gather = distributed.all_gather_with_grad if gather else None

    def forward(self, images: torch.Tensor, targets: torch.Tensor, paths: list[str]):
        model = self.model
        cap = (model.caption_embeddings(self.trainer._caption_features(model, paths))
               if model.config.branches != "complexity" else None)
        return model.training_step(images, targets, cap, from_trunk=self.from_trunk, gather=self.gather)


class CMSSATrainer:
    """Trains CM-SSA models built by ``build_model()`` and scores files with the trained one."""

    def __init__(self, build_model: Callable[[], CMSSA], recipe: TrainRecipe = TrainRecipe(),
                 captions: dict[str, str] | None = None, name: str = "cmssa",
                 checkpoint_dir: str | None = None, resume: bool = False, progress: bool = False):
        self.build_model, self.recipe, self.name, self.progress = build_model, recipe, name, progress
        self.captions = CaptionLookup(captions) if captions else None
        self.device = distributed.process_device(recipe.device)
        self.checkpoints = FitCheckpoints(checkpoint_dir, resume=resume) if checkpoint_dir else None
        self.model: CMSSA | None = None
        self.history: list[dict] = []
        self._crop_cache: dict[tuple[str, int], np.ndarray] = {}
        self._patch_cache: dict[str, np.ndarray] = {}
        self._caption_cache: dict[str, torch.Tensor] = {}

    # --- data -----------------------------------------------------------------------------------

    def _cacheable(self, model: CMSSA) -> bool:
        return bool(getattr(model.encoders, "cacheable_trunk", False))

    def _disk_cache(self, kind: str, model: CMSSA, params: dict) -> Path | None:
        if not self.recipe.cache_dir:
            return None
        key = json.dumps({"kind": kind, "encoders": type(model.encoders).__name__,
                          "trunk": getattr(model.encoders, "trunk_id", ""), **params}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return Path(self.recipe.cache_dir) / f"cmssa_{kind}_{digest}.npz"

    @torch.no_grad()
    def _trunk(self, model: CMSSA, pixels_uint8: torch.Tensor) -> np.ndarray:
        x = model.normalize(pixels_uint8.to(self.device))
        return model.encoders.trunk_features(x).float().cpu().numpy()

    def _crop_features(self, model: CMSSA, paths: list[str]) -> None:
        """Fill the cache with the trunk features of ``train_crops`` seeded crops per image."""
        r, cfg = self.recipe, model.config
        dist = distributed.current(self.device)
        crop = RandomCrop(r.train_short_side, cfg.patch_size, r.seed)
        disk = self._disk_cache("crops", model, {"crop": asdict(crop)})
        self._load_disk(disk, self._crop_cache, tuple_keys=True)
        for draw in range(r.train_crops):
            todo = [p for p in paths if (p, draw) not in self._crop_cache]
            if not todo:
                continue
            keys = distributed.shard(list(range(len(todo))), dist.rank, dist.world)  # this process's share
            mine = [todo[k] for k in keys]
            workers = default_num_workers() if r.num_workers is None else r.num_workers
            loader = torch.utils.data.DataLoader(_CropFiles(mine, crop, draw, keys), batch_size=r.eval_batch_size,
                                                 num_workers=workers, collate_fn=_collate_crops)
            bar = progress_bar(len(mine), dist.main)
            bar.set_description(f"training crops {draw + 1}/{r.train_crops}")
            found: dict[tuple[str, int], np.ndarray] = {}
            for idx, pixels, errors in loader:
                for i, message in errors:
                    log.warning("skipped in training: %s", message)
                if pixels is not None:
                    for i, f in zip(idx, self._trunk(model, pixels)):
                        found[(mine[i], draw)] = f
                bar.update(len(idx) + len(errors))
            bar.close()
            self._crop_cache.update(dist.all_gather_dict(found) if dist.world > 1 else found)
        if dist.main:
            self._save_disk(disk, self._crop_cache)

    def _patch_features(self, model: CMSSA, paths: list[str], max_pixels=None) -> dict[str, str]:
        """Fill the cache with the trunk features of every evaluation patch; returns load errors."""
        dist = distributed.current(self.device)
        disk = self._disk_cache("patches", model, {"grid": repr(model.transform)})
        self._load_disk(disk, self._patch_cache)
        todo = [p for p in paths if p not in self._patch_cache]
        errors: dict[str, str] = {}
        if todo:
            mine = distributed.shard(todo, dist.rank, dist.world)  # this process's share, gathered below
            found: dict[str, np.ndarray] = {}
            bar = progress_bar(len(mine), dist.main)
            bar.set_description("evaluation patches")
            for indices, batch, bad in iter_batches(mine, model.transform, model.collate, batch_size=self.recipe.eval_batch_size,
                                                    num_workers=self.recipe.num_workers, max_pixels=max_pixels):
                for i, message in bad:
                    errors[mine[i]] = message
                if batch is not None:
                    counts = [len(p) for p in batch]
                    feats = self._trunk(model, torch.cat(batch))
                    for i, f in zip(indices, np.split(feats, np.cumsum(counts)[:-1])):
                        found[mine[i]] = f
                bar.update(len(indices) + len(bad))
            bar.close()
            if dist.world > 1:
                found = dist.all_gather_dict(found)
                errors = {k: v for part in dist.all_gather_object(errors) for k, v in part.items()}
            self._patch_cache.update(found)
            if dist.main:
                self._save_disk(disk, self._patch_cache)
        return errors

    @staticmethod
    def _load_disk(path: Path | None, cache: dict, tuple_keys: bool = False) -> None:
        if path is None or not path.exists() or cache:
            return
        with np.load(path, allow_pickle=False) as data:
            keys = json.loads(str(data["keys"]))
            for n, key in enumerate(keys):
                cache[tuple(key) if tuple_keys else key] = data[f"f{n}"]

    @staticmethod
    def _save_disk(path: Path | None, cache: dict) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(cache)
        temp = path.with_suffix(".tmp.npz")
        np.savez(temp, keys=json.dumps([list(k) if isinstance(k, tuple) else k for k in keys]),
                 **{f"f{n}": cache[k] for n, k in enumerate(keys)})
        temp.replace(path)

    def _caption_features(self, model: CMSSA, paths: Sequence[str]) -> torch.Tensor:
        """Caption features per path; computed once per caption while the text encoder is frozen."""
        texts = [self.captions(p) for p in paths]
        if model.config.train_backbone:  # a fine-tuned text encoder changes every step: no cache
            return model.caption_features(texts)
        missing = sorted({t for t in texts if t not in self._caption_cache})
        for start in range(0, len(missing), 64):
            chunk = missing[start:start + 64]
            with torch.no_grad():
                feats = model.caption_features(chunk)
            self._caption_cache.update(zip(chunk, feats.float()))
        return torch.stack([self._caption_cache[t] for t in texts]).to(self.device)

    # --- training -------------------------------------------------------------------------------

    def fit_dataset(self, train: ComplexityDataset, val: ComplexityDataset | None = None, **_) -> dict:
        r = self.recipe
        torch.manual_seed(r.seed)
        model = self.build_model().to(self.device)
        cfg = model.config
        if cfg.branches != "complexity" and self.captions is None:
            raise ValueError(f"CM-SSA with branches={cfg.branches!r} needs captions of the training images")
        has_val = val is not None and len(val) > 0
        low, high = label_range([train] + ([val] if has_val else []))
        paths = train.full_paths()
        targets = {p: (s - low) / (high - low) for p, s in zip(paths, train.scores)}
        cacheable = self._cacheable(model)
        if cacheable:
            self._crop_features(model, paths)
            paths = [p for p in paths if (p, 0) in self._crop_cache]
        checkpoint = None
        if self.checkpoints is not None:
            checkpoint = self.checkpoints.file(FitCheckpoints.key(
                "cmssa", self.name, asdict(cfg), type(model.encoders).__name__, getattr(model.encoders, "trunk_id", ""),
                r.defining(), dataset_fingerprint(train), dataset_fingerprint(val)))
        task = _CMSSATask(self, model, paths, targets, val if has_val else None, cacheable)
        settings = LoopSettings(epochs=r.epochs, amp=r.amp, amp_dtype=r.amp_dtype, patience=r.patience,
                                find_unused_parameters=True, progress=self.progress, description=self.name)
        fit = loop.run(task, settings, device=self.device, checkpoint=checkpoint)
        # a validation part too small for a correlation (all NaN) cannot choose: keep the last epoch
        selected = has_val and fit.selected
        model.eval()
        self.model, self.history = model, fit.history
        return {"best_epoch": fit.best_epoch if selected else len(self.history),
                "epochs_run": len(self.history), "label_range": [low, high], "n_train": len(paths),
                "selected_on": "validation" if selected else "last epoch", "history": self.history}

    def _epoch_batches(self, model: CMSSA, batches: list[list[str]], epoch: int, cacheable: bool, dist):
        """Per global batch: this process's share of its paths (positions ``rank, rank + W, ...``),
        their inputs, and the number of images of the global batch."""
        r = self.recipe
        if cacheable:
            draw = (epoch - 1) % r.train_crops
            for batch in batches:
                mine = distributed.shard(batch, dist.rank, dist.world)
                feats = np.stack([self._crop_cache[(p, draw)] for p in mine])
                yield mine, torch.from_numpy(feats).to(self.device), len(batch)
            return
        crop = RandomCrop(r.train_short_side, model.config.patch_size, r.seed)
        flat, keys, local_batches, start = [], [], [], 0
        for batch in batches:  # crop k of the epoch is drawn with key k, whichever process loads it
            positions = distributed.shard(list(range(start, start + len(batch))), dist.rank, dist.world)
            local_batches.append(list(range(len(flat), len(flat) + len(positions))))
            flat.extend(batch[k - start] for k in positions)
            keys.extend(positions)
            start += len(batch)
        loader = torch.utils.data.DataLoader(_CropFiles(flat, crop, epoch, keys), batch_sampler=local_batches,
                                             num_workers=default_num_workers() if r.num_workers is None else r.num_workers,
                                             collate_fn=_collate_crops, pin_memory=self.device.type == "cuda")
        for idx, pixels, errors in loader:
            for _, message in errors:
                log.warning("skipped in training: %s", message)
            if dist.world > 1:  # images that failed to load: every process must agree on the step
                counts = [int(c[0]) for c in dist.all_gather_arrays(np.array([len(idx)], dtype=np.int64))]
                usable, n_global = min(counts) >= 1 and sum(counts) >= 2, sum(counts)
            else:
                usable, n_global = len(idx) >= 2, len(idx)
            if usable:
                yield [flat[i] for i in idx], model.normalize(pixels.to(self.device, non_blocking=True)), n_global

    def _selection_score(self, val: ComplexityDataset) -> float:
        scores, _ = self.score_files(val.full_paths())
        return selection_score(scores, val.scores, val.categories)

    # --- scoring --------------------------------------------------------------------------------

    @torch.no_grad()
    def score_files(self, paths: Sequence[str], *, batch_size: int = 32, num_workers: int | None = None,
                    max_pixels: int | None = None, progress: bool = False) -> tuple[np.ndarray, dict[str, str]]:
        """Patch-averaged scores of ``paths`` (``nan`` where an image failed to load) and the errors."""
        from ..scoring import score_paths

        model = self._require_model()
        model.eval()
        paths = list(paths)
        scores = np.full(len(paths), np.nan)
        if model.config.branches == "alignment":
            return self._score_alignment_only(model, paths, max_pixels)
        if not self._cacheable(model):
            dist = distributed.current(self.device)
            mine = distributed.shard(list(range(len(paths))), dist.rank, dist.world)  # shares gathered below
            local, errors = np.full(len(mine), np.nan), {}
            for j, rec in enumerate(score_paths([paths[i] for i in mine], model, batch_size=batch_size,
                                                num_workers=num_workers, max_pixels=max_pixels,
                                                progress=progress and dist.main)):
                if rec.error:
                    errors[rec.path] = rec.error
                else:
                    local[j] = rec.score
            if dist.world == 1:
                return local, errors
            for rank, part in enumerate(dist.all_gather_arrays(local)):
                scores[rank::dist.world] = part
            return scores, {k: v for part in dist.all_gather_object(errors) for k, v in part.items()}
        errors = self._patch_features(model, paths, max_pixels)
        level_emb = model.level_embeddings()
        for i, p in enumerate(paths):
            if p in self._patch_cache:
                feats = torch.from_numpy(self._patch_cache[p]).to(self.device)
                scores[i] = float(model.complexity_scores(model.complexity_image_embeddings(feats, True), level_emb).mean())
        return scores, errors

    def _score_alignment_only(self, model: CMSSA, paths: list[str], max_pixels) -> tuple[np.ndarray, dict[str, str]]:
        """Table 3's alignment-only model scores image-caption pairs by Eq. 5's in-batch softmax, so
        the score of an image depends on its batch: images are taken in ``batch_size`` groups in the
        given order, each represented by the mean embedding of its patches."""
        if not self._cacheable(model):
            raise NotImplementedError("alignment-only evaluation is implemented for cacheable (frozen) trunks")
        errors = self._patch_features(model, paths, max_pixels)
        ok = [p for p in paths if p in self._patch_cache]
        emb = torch.stack([model.alignment_image_embeddings(torch.from_numpy(self._patch_cache[p]).to(self.device),
                                                            True).mean(0) for p in ok])
        cap = model.caption_embeddings(self._caption_features(model, ok))
        out = {}
        for s in range(0, len(ok), self.recipe.batch_size):
            part = alignment_scores(emb[s:s + self.recipe.batch_size], cap[s:s + self.recipe.batch_size], "paper",
                                    model.config.align_logit_scale)
            out.update(zip(ok[s:s + self.recipe.batch_size], part.tolist()))
        return np.array([out.get(p, np.nan) for p in paths]), errors

    def _require_model(self) -> CMSSA:
        if self.model is None:
            raise RuntimeError("train first: call fit_dataset(train, val)")
        return self.model


class _CMSSATask:
    """CM-SSA's training for :func:`pyica.training.loop.run`: epoch ``e``'s order is the ``e``-th
    permutation of one generator seeded with ``seed``; the step runs the captions inside the module DDP
    wraps; no lr schedule (the paper's)."""

    def __init__(self, trainer: "CMSSATrainer", model: CMSSA, paths: list[str], targets: dict[str, float],
                 val: ComplexityDataset | None, cacheable: bool):
        r = trainer.recipe
        self.trainer, self.model, self.recipe, self.paths, self.targets = trainer, model, r, paths, targets
        self.val, self.cacheable, self.device = val, cacheable, trainer.device
        dist = distributed.current(self.device)
        self.module = _TrainingStep(trainer, model, cacheable, gather=dist.world > 1)
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=r.lr,
                                          weight_decay=r.weight_decay)
        self.rng, self.next_epoch = np.random.default_rng(r.seed), 1
        full, rest = divmod(len(paths), r.batch_size)
        self.steps_per_epoch = full + (1 if rest and (full == 0 or rest >= max(2, dist.world)) else 0)

    def epoch_batches(self, epoch: int, dist, skip: int = 0):
        r = self.recipe
        while self.next_epoch <= epoch:  # the data order of epoch e depends on (seed, e) only
            permutation = self.rng.permutation(len(self.paths))
            self.next_epoch += 1
        order = [self.paths[i] for i in permutation]
        batches = [order[i:i + r.batch_size] for i in range(0, len(order), r.batch_size)]
        # an in-batch softmax needs two captions, and every process at least one image
        if len(batches) > 1 and len(batches[-1]) < max(2, dist.world):
            batches[-2].extend(batches.pop())
        for batch_paths, images, n_global in loop.skip_batches(
                self.trainer._epoch_batches(self.model, batches, epoch, self.cacheable, dist), skip):
            yield Batch((batch_paths, images), len(batch_paths), n_global)

    def loss(self, net, batch: Batch):
        batch_paths, images = batch.data
        y = torch.tensor([self.targets[p] for p in batch_paths], dtype=torch.float32, device=self.device)
        return net(images, y, batch_paths)

    def learning_rate(self, step: int, epoch: int) -> None:
        return None

    def validate(self) -> float | None:
        if self.val is None:
            return None
        self.trainer.model = self.model
        return self.trainer._selection_score(self.val)

    def trainable_state(self) -> dict:
        return self.model.trainable_state_dict()

    def load_trainable_state(self, state: dict) -> None:
        self.model.load_state_dict(state, strict=False)


# --- `pyica train CONFIG` for CM-SSA ---------------------------------------------------------------

def captions_for(config: dict, ds: ComplexityDataset, out_dir: Path, device: str = "auto") -> dict[str, str] | None:
    """The captions a config asks for: ``{"file": PATH}`` (made elsewhere, e.g. by InstructBLIP) or
    ``{"captioner": NAME, ...}`` (made now with `pyica.captions`, cached in ``out_dir`` and resumed)."""
    spec = config.get("captions")
    if not spec:
        return None
    from ..captions import caption_dataset, create_captioner, load_captions

    if "file" in spec:
        return load_captions(spec["file"])
    options = {k: v for k, v in spec.items() if k != "captioner"}
    target = out_dir / f"captions_{ds.name}_{spec['captioner']}.jsonl"
    if not target.exists():
        caption_dataset(ds.full_paths(), create_captioner(spec["captioner"], device=device, **options), target)
    return load_captions(target)


def _build(config: dict, ds, options, dist, out_dir: Path, checkpoint_dir: Path | None = None) -> CMSSATrainer:
    """The trainer of a CM-SSA config (keys besides every trainer's: ``encoders``, ``cmssa``, ``recipe``,
    ``captions``). Under torchrun rank 0 makes (and caches) the captions, then every rank reads them."""
    from ..models.cmssa import build_encoders
    from .config import section_from

    recipe = section_from(TrainRecipe, config, "recipe", device=options.device,  # each process: its LOCAL_RANK GPU
                         num_workers=options.num_workers)
    cmssa_config = section_from(CMSSAConfig, config, "cmssa")
    if not config.get("encoders"):
        raise ValueError(f"{config['config_file']}: method 'cmssa' needs an 'encoders' section")
    captions = None
    if cmssa_config.branches != "complexity":
        if dist.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            captions = captions_for(config, ds, out_dir, str(dist.device))
        dist.barrier()
        if not dist.main:
            captions = captions_for(config, ds, out_dir, str(dist.device))
    encoders = build_encoders(config["encoders"])  # built once; each fit starts from a fresh copy

    def build() -> CMSSA:
        return CMSSA(copy.deepcopy(encoders), cmssa_config)

    return CMSSATrainer(build, recipe, captions, name=config["model"],
                        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None, resume=options.resume,
                        progress=options.progress and dist.main)


def _card(trainer: CMSSATrainer, fit: dict, config: dict, ds, evaluation, dist) -> dict:
    cmssa_config = trainer.model.config
    return {"name": config["model"], "encoders": config["encoders"],
            "preprocessing": {"patches": f"shorter side resized to {cmssa_config.eval_short_side} px (bicubic), "
                                         f"{cmssa_config.patch_size}-px patches every {cmssa_config.patch_stride} px, "
                                         f"at most {cmssa_config.max_patches}; score = mean patch score"},
            "score": {"meaning": f"{ds.name} score mapped from {fit['label_range']} to [0, 1]"},
            "training": {"dataset": ds.name, "images": fit["n_train"], "recipe": trainer.recipe.to_dict(),
                         "processes": dist.world, "best_epoch": fit["best_epoch"], "selected_on": fit["selected_on"],
                         "captions": config.get("captions"), "config_file": config["config_file"],
                         "history": fit["history"]},
            "evaluation": evaluation}


def _save(trainer: CMSSATrainer, card: dict, path: Path) -> dict:
    from ..models.cmssa import save_cmssa

    return save_cmssa(trainer.model, path, card)


#: ``"method": "cmssa"`` of ``pyica train`` (:mod:`pyica.training.trainers`).
METHOD = Method(build=_build, card=_card, save=_save, sections={"recipe": TrainRecipe, "cmssa": CMSSAConfig})
