"""Unlabeled images for self-supervised pretraining, streamed, deterministic and resumable.

:class:`UnlabeledImages` is an ``IterableDataset`` over image **folders** (recursive), **CSV
manifests** (the image column, as :func:`pyica.inputs.iter_image_paths` reads it), single image
files and **WebDataset-style tar shards** (uncompressed ``.tar`` files whose members with an image
extension are the samples; other members such as ``.json``/``.txt`` are ignored). A source may be a
glob (``shards/*.tar``) or a brace pattern (``shards/train-{000000..000099}.tar``, ``{a,b}``).

Each sample is preprocessed simply: the image (decoded by :func:`pyica.loading.load_image`'s rules;
JPEGs are decoded at a reduced DCT scale when that still leaves the shorter side >= ``image_size``)
is resized (bicubic) to a shorter side of ``image_size`` and a random ``image_size`` square is cut
from it, giving a ``uint8`` tensor ``(3, S, S)``. Augmentation is the model's job.

An unreadable file or tar member is skipped with a logged warning that names it (``file`` or
``shard.tar:member``); the run goes on.

How the order is made, and why a resumed run sees exactly the same samples
---------------------------------------------------------------------------
At start the sources are listed once: folders and manifests give files (minus ``exclude``), shards
are indexed (one pass over the tar headers, no decoding; each member's data offset and size is kept,
so members are later read by seek). Every file is a *unit* of one sample, every shard a unit of its
image members. For epoch ``e``:

1. the units are put in a random order drawn from ``(seed, e)``, and the members of each shard in a
   random order drawn from ``(seed, e, shard number)``; concatenated, this is the epoch's *global
   order*: position ``p = 0 .. N-1`` names one sample (``N`` capped at ``samples_per_epoch``);
2. the random crop of the sample at position ``p`` is drawn from its own generator seeded by
   ``(seed, e, p)``, never from worker or process state, so the pixels of a position do not depend
   on which worker or rank loads it, or on what was loaded before;
3. positions are cut into *blocks* of ``batch_size`` (1 when items are yielded one by one), starting
   at the stream's state ``consumed``. Block ``j`` goes to rank ``j % world_size`` and, within that
   rank, to DataLoader worker ``(j // world_size) % num_workers``. Blocks are disjoint, so no sample
   is seen twice in an epoch; a PyTorch DataLoader takes batches from its workers round-robin, so a
   rank receives its blocks in order.

The state is ``(epoch, consumed)``: ``consumed`` counts positions of the epoch already used by all
ranks together (an unreadable image still counts, as a position). A run resumed from that state
starts its first block at position ``consumed`` and so continues with exactly the samples, and the
crops, the uninterrupted run would have used next (the trainer always stops at a whole global
batch, so block boundaries and the rank that owns each block are the same as well).
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..inputs import ShardIndex, ShardReader, decode_image, expand_sources, index_shard, iter_image_paths
from ..loading import ImageLoadError, image_extensions

__all__ = ["UnlabeledImages", "resize_and_crop", "distributed_info"]

log = logging.getLogger(__name__)


def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)`` of ``torch.distributed`` when initialised, else ``(0, 1)``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resize_and_crop(image: Image.Image, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Resize (bicubic) to a shorter side of ``size``, cut a random ``size`` square: uint8 ``(3, size, size)``."""
    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new != (w, h):
        image = image.resize(new, Image.Resampling.BICUBIC)
    x = int(rng.integers(0, new[0] - size + 1))
    y = int(rng.integers(0, new[1] - size + 1))
    crop = np.asarray(image.crop((x, y, x + size, y + size)), dtype=np.uint8)
    return torch.from_numpy(crop.copy()).permute(2, 0, 1).contiguous()


class _EpochPlan:
    """The global order of one epoch: position -> (unit, index inside the unit)."""

    def __init__(self, seed: int, epoch: int, counts: np.ndarray):
        self.seed, self.epoch = seed, epoch
        self.order = np.random.default_rng([seed, epoch]).permutation(len(counts))
        self.ends = np.cumsum(counts[self.order])
        self._members: dict[int, np.ndarray] = {}

    def locate(self, position: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.ends, position, side="right"))
        start = int(self.ends[k - 1]) if k else 0
        return int(self.order[k]), position - start

    def member(self, shard_no: int, index: int, count: int) -> int:
        perm = self._members.get(shard_no)
        if perm is None:
            perm = self._members[shard_no] = np.random.default_rng([self.seed, self.epoch, 1, shard_no]).permutation(count)
        return int(perm[index])


class UnlabeledImages(torch.utils.data.IterableDataset):
    """Unlabeled images from folders, CSV manifests, image files and tar shards (see the module doc).

    Args:
        sources: folders, ``.csv`` manifests, image files, ``.tar`` shards, globs or brace patterns.
        image_size: side ``S`` of the square uint8 crops.
        seed: seeds the epoch orders and the crops.
        exclude: image paths never yielded (e.g. a benchmark's test images), matched on the real
            path of files from folders and manifests; shard members are not matched.
        batch_size: ``None`` yields single samples ``(3, S, S)``; a number yields stacked batches
            ``(n, 3, S, S)`` of that many consecutive positions of this rank (``n`` is smaller when
            some images were unreadable, and may be 0).
        drop_last: in batch mode, stop at the last round of whole batches for every rank, so that
            all ranks get the same number of batches (what data-parallel training needs).
        samples_per_epoch: take only the first that many positions of each epoch's order.
        rank, world_size: this process's part; default from ``torch.distributed`` when initialised.
        return_keys: yield ``(key, sample)`` (or ``(keys, batch)``); a key is the file path or
            ``shard.tar:member``.
        max_pixels: decompression-bomb budget, as for :func:`load_image`.
        jpeg_draft: decode JPEGs at a reduced scale when it still covers ``image_size`` (faster).
    """

    def __init__(self, sources: Sequence[str | os.PathLike], image_size: int = 224, *, seed: int = 0,
                 exclude: Iterable[str | os.PathLike] | None = None, batch_size: int | None = None,
                 drop_last: bool = False, samples_per_epoch: int | None = None, rank: int | None = None,
                 world_size: int | None = None, return_keys: bool = False, max_pixels: int | None = None,
                 jpeg_draft: bool = True):
        super().__init__()
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        self.sources = [os.fspath(s) for s in sources]
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.batch_size = None if batch_size is None else int(batch_size)
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        self.drop_last = bool(drop_last)
        self.return_keys = return_keys
        self.max_pixels = max_pixels
        self.jpeg_draft = jpeg_draft
        dist_rank, dist_world = distributed_info()
        self.rank = dist_rank if rank is None else int(rank)
        self.world_size = dist_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        self.files, self.shards, self.excluded = self._list(exclude)
        self.counts = np.concatenate([np.ones(len(self.files), dtype=np.int64),
                                      np.asarray([len(s.names) for s in self.shards], dtype=np.int64)])
        self.total = int(self.counts.sum())
        if self.total == 0:
            raise ValueError(f"no images found in {', '.join(self.sources) or 'no sources'}")
        self.num_samples = self.total
        if samples_per_epoch is not None:
            if samples_per_epoch > self.total:
                log.warning("samples_per_epoch %d is more than the %d images: an epoch is all of them",
                            samples_per_epoch, self.total)
            self.num_samples = min(self.total, int(samples_per_epoch))
        self.epoch, self.consumed = 0, 0

    # --- listing ------------------------------------------------------------------------------------

    def _list(self, exclude) -> tuple[list[str], list[ShardIndex], int]:
        extensions = image_extensions()
        files: dict[str, None] = {}
        shard_paths: list[str] = []
        for item in expand_sources(self.sources):
            if os.path.isdir(item) or item.lower().endswith(".csv"):
                files.update((os.path.abspath(p), None) for p in iter_image_paths([item]))
            elif item.lower().endswith(".tar"):
                shard_paths.append(os.path.abspath(item))
            else:
                files[os.path.abspath(item)] = None
        excluded = 0
        if exclude:
            real = {os.path.realpath(os.fspath(p)) for p in exclude}
            names = {os.path.basename(p) for p in real}
            kept = {}
            for p in files:
                if os.path.basename(p) in names and os.path.realpath(p) in real:
                    excluded += 1
                else:
                    kept[p] = None
            files = kept
        shard_paths = list(dict.fromkeys(shard_paths))
        if len(shard_paths) > 1:
            with ThreadPoolExecutor(min(8, len(shard_paths))) as pool:
                shards = list(pool.map(lambda p: index_shard(p, extensions), shard_paths))
        else:
            shards = [index_shard(p, extensions) for p in shard_paths]
        return list(files), shards, excluded

    # --- state ----------------------------------------------------------------------------------------

    @property
    def state(self) -> tuple[int, int]:
        """``(epoch, consumed)``: positions of ``epoch`` already used by all ranks together."""
        return self.epoch, self.consumed

    def set_state(self, epoch: int, consumed: int = 0) -> None:
        """Start the next iteration at position ``consumed`` of ``epoch`` (set before ``iter``)."""
        if not 0 <= consumed <= self.num_samples:
            raise ValueError(f"consumed must be in 0..{self.num_samples}, not {consumed}")
        self.epoch, self.consumed = int(epoch), int(consumed)

    def batches_per_rank(self) -> int:
        """Blocks this rank gets from the current state to the end of the epoch."""
        k, world = self.batch_size or 1, self.world_size
        remaining = self.num_samples - self.consumed
        blocks = (remaining // (k * world)) * world if self.drop_last else math.ceil(remaining / k)
        return max(0, math.ceil((blocks - self.rank) / world))

    def describe(self) -> dict:
        """Counts for logs and cards."""
        return {"sources": self.sources, "files": len(self.files), "shards": len(self.shards),
                "shard_images": int(sum(len(s.names) for s in self.shards)), "images": self.total,
                "excluded": self.excluded, "samples_per_epoch": self.num_samples, "image_size": self.image_size}

    # --- iteration ------------------------------------------------------------------------------------

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.iter_worker(worker, workers)

    def iter_worker(self, worker: int, num_workers: int) -> Iterator:
        """The samples (or batches) of DataLoader worker ``worker`` of ``num_workers`` on this rank."""
        plan = _EpochPlan(self.seed, self.epoch, self.counts)
        k, world = self.batch_size or 1, self.world_size
        reader = ShardReader()
        try:
            for local in range(worker, self.batches_per_rank(), num_workers):
                block = local * world + self.rank
                lo = self.consumed + block * k
                positions = range(lo, min(lo + k, self.num_samples))
                loaded = [item for item in (self._load(plan, p, reader) for p in positions) if item is not None]
                if self.batch_size is None:
                    for key, x in loaded:
                        yield (key, x) if self.return_keys else x
                    continue
                keys = [key for key, _ in loaded]
                batch = (torch.stack([x for _, x in loaded]) if loaded
                         else torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8))
                yield (keys, batch) if self.return_keys else batch
        finally:
            reader.close()

    def _load(self, plan: _EpochPlan, position: int, reader: ShardReader):
        unit, index = plan.locate(position)
        key = f"position {position} of epoch {plan.epoch}"
        try:
            if unit < len(self.files):
                key = self.files[unit]
                source: str | bytes = key
            else:
                shard_no = unit - len(self.files)
                shard = self.shards[shard_no]
                member = plan.member(shard_no, index, len(shard.names))
                key = f"{shard.path}:{shard.names[member]}"
                source = reader.read(shard.path, int(shard.offsets[member]), int(shard.sizes[member]), key)
            image = decode_image(source, key, self.image_size, self.max_pixels, self.jpeg_draft)
            rng = np.random.default_rng([self.seed, self.epoch, position])
            return key, resize_and_crop(image, self.image_size, rng)
        except ImageLoadError as err:
            log.warning("skipped unreadable image: %s", err)
        except Exception as err:  # noqa: BLE001 - one odd image must never stop pretraining
            log.warning("skipped image: %s: %s: %s", key, type(err).__name__, err)
        return None
