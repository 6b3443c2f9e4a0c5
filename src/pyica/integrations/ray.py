"""Scoring on Ray Data: past one machine without a home-made engine (issue 23).

Two pieces:

* :class:`ComplexityScorer`, a callable class for :meth:`ray.data.Dataset.map_batches` on an actor pool:
  each actor builds the model once; a batch with an image column (numpy arrays, as
  :func:`ray.data.read_images` gives them) or a path column (files loaded by pyica's own rules,
  :func:`pyica.loading.load_image` with the model transform's ``decode_size``, so the scores equal
  ``pyica score``'s) comes back with a ``complexity`` column (``NaN`` on failure) and an ``error`` column
  (``None``, or the message ``pyica score`` writes: a bad file never raises)::

      import ray
      from pyica.integrations.ray import ComplexityScorer

      ds = ray.data.read_images("s3://bucket/photos/", mode="RGB")
      ds = ds.map_batches(ComplexityScorer, fn_constructor_kwargs={"model": "entropy"},
                          batch_size=32, concurrency=4, num_cpus=1)
      ds.select_columns(["path", "complexity"]).write_parquet("s3://bucket/scores/")

* :func:`score_command`, ``pyica score --engine ray``: the inputs of ``pyica score`` (files, folders,
  manifests, archives) are listed on the driver by :func:`pyica.inputs.iter_image_paths` into a Ray
  dataset of paths, scored by a pool of :class:`ComplexityScorer` actors, and streamed back
  (``iter_batches``, in input order) into pyica's own :class:`~pyica.writers.ScoreWriter`, so the output
  keeps every rule of ``pyica score`` (``OUT.part``, lock, atomic finish, ``--resume``, metadata).

Ray is imported only when used: this module imports without it (``pip install 'pyica[ray]'``).
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Iterable

import numpy as np

from ..inputs import MemberBytes, ShardReader, TarMember, UnreadableInput, ZipMember, decode_image
from ..loading import ImageLoadError, load_image, to_rgb

__all__ = ["ComplexityScorer", "input_rows", "score_command", "RAY_MISSING", "PATH_COLUMN", "IMAGE_COLUMN",
           "SOURCE_COLUMN", "SCORE_COLUMN", "ERROR_COLUMN"]

log = logging.getLogger("pyica")

#: The one line printed when ``--engine ray`` runs without Ray installed.
RAY_MISSING = "--engine ray needs Ray: pip install 'pyica[ray]'"

PATH_COLUMN, IMAGE_COLUMN, SCORE_COLUMN, ERROR_COLUMN = "path", "image", "complexity", "error"
#: Column of :func:`input_rows`: how to read an archive member (``b""`` for a plain file); internal, dropped
#: from the scorer's output.
SOURCE_COLUMN = "pyica_source"



# --- inputs as rows --------------------------------------------------------------------------------

#: The input kinds of :func:`pyica.inputs.iter_image_paths` that carry more than their name.
_INPUT_KINDS = {cls.__name__: cls for cls in (TarMember, ZipMember, MemberBytes, UnreadableInput)}


class _InputUnpickler(pickle.Unpickler):
    """Unpickles only pyica's input kinds (and ``str``/``bytes``): a source column rebuilds nothing else."""

    def find_class(self, module, name):
        if module == TarMember.__module__ and name in _INPUT_KINDS:
            return _INPUT_KINDS[name]
        raise pickle.UnpicklingError(f"not a pyica input kind: {module}.{name}")


def input_rows(paths: Iterable[str]) -> Iterable[dict[str, Any]]:
    """One row per path of :func:`pyica.inputs.iter_image_paths`: ``{"path": name, "pyica_source": bytes}``.

    An archive member (:class:`~pyica.inputs.TarMember`, ``ZipMember``, ``MemberBytes``) or an input that
    failed at discovery (:class:`~pyica.inputs.UnreadableInput`) is a ``str`` that carries more (where
    its bytes lie, or why it failed); Arrow keeps only the text, so that travels pickled in the source
    column (``b""`` for a plain file), and :class:`ComplexityScorer` rebuilds it (only those kinds)."""
    for path in paths:
        source = pickle.dumps(path, protocol=4) if type(path).__name__ in _INPUT_KINDS else b""
        yield {PATH_COLUMN: str(path), SOURCE_COLUMN: source}


def _input_from_row(path: str, source) -> str:
    if source is None or len(source) == 0:
        return str(path)
    return _InputUnpickler(io.BytesIO(bytes(source))).load()


# --- the scorer --------------------------------------------------------------------------------------

class ComplexityScorer:
    """A callable class for :meth:`ray.data.Dataset.map_batches` (actor pool): adds ``complexity`` and ``error``.

    The model is built once per actor (``create_model(model, device=...)``, or, with ``weights`` of a
    model pyica trained, from its card as ``pyica score --weights`` does). A batch (a dict of numpy
    arrays or a pandas DataFrame) is scored from ``image_column`` when it has one (HxWx3 uint8 arrays,
    or HxW / HxWx4, converted by pyica's rules: alpha on white), else from ``path_column`` (files,
    and ``ARCHIVE:MEMBER`` names with :func:`input_rows`' source column); the model's transform,
    collate and ``score_batch`` run as in :func:`pyica.scoring.score_paths`, so scores equal ``pyica
    score``'s. An input that fails to load or preprocess gets ``complexity`` NaN and ``error`` naming it
    and the cause; the batch goes on.

    ``device``: ``"auto"`` is CUDA when the actor was given a GPU (``num_gpus=1``), else the CPU.
    ``load_threads``: threads that decode one batch's files (Pillow releases the GIL while decoding;
    worth it on a GPU actor); 0 or 1 decodes in the actor's thread.
    """

    def __init__(self, model: str | None = None, *, device: str = "auto", precision: str = "fp32",
                 weights: str | None = None, allow_unverified_weights: bool = False, max_pixels: int | None = None,
                 path_column: str = PATH_COLUMN, image_column: str = IMAGE_COLUMN, load_threads: int = 0):
        import torch

        from ..registry import DEFAULT_MODEL, create_model, model_from_weights, trained_weights_card
        from ..scoring import PRECISIONS

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        trained = trained_weights_card(weights) if weights else None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if trained:
            self.model = model_from_weights(weights, device=device, expect=model,
                                            allow_unverified=allow_unverified_weights)
            self.name = trained["name"]
        else:
            self.name = model or DEFAULT_MODEL
            self.model = create_model(self.name, device=device, **({"weights": weights} if weights else {}),
                                      **({"allow_unverified": True} if allow_unverified_weights else {}))
        self.transform, self.collate = self.model.transform, self.model.collate
        self.decode_size = getattr(self.transform, "decode_size", None)  # as pyica score: JPEGs decoded reduced
        self.max_pixels = max_pixels
        self.path_column, self.image_column = path_column, image_column
        self.dtype = PRECISIONS[precision]
        self.load_threads = int(load_threads)
        self._pool = ThreadPoolExecutor(self.load_threads) if self.load_threads > 1 else None
        self._local = threading.local()  # one ShardReader per loading thread (open archives)

    # loading: the rules of pyica.inputs' DataLoader dataset, through its public parts
    def _shards(self) -> ShardReader:
        reader = getattr(self._local, "shards", None)
        if reader is None:
            reader = self._local.shards = ShardReader()
        return reader

    def _item_from_path(self, path: str):
        name = str(path)
        if isinstance(path, UnreadableInput):
            return None, path.message
        try:
            if isinstance(path, TarMember):
                data = self._shards().read(path.shard, path.offset, path.size, name)
            elif isinstance(path, ZipMember):
                data = self._shards().read_zip(path.archive, path.member, name)
            elif isinstance(path, MemberBytes):
                data = path.data
            else:
                return self.transform(load_image(path, self.max_pixels, decode_size=self.decode_size)), None
            image = decode_image(data, name, max_pixels=self.max_pixels, decode_size=self.decode_size)
            return self.transform(image), None
        except ImageLoadError as err:
            return None, str(err)
        except Exception as err:  # a transform failing on one odd image must not stop the job
            return None, f"{name}: preprocessing failed ({type(err).__name__}: {err})"

    def _item_from_array(self, array, label: str):
        from PIL import Image

        try:
            array = np.asarray(array)
            if array.dtype != np.uint8:
                raise ValueError(f"expected uint8 pixels, got {array.dtype}")
            if array.ndim == 3 and array.shape[2] == 1:
                array = array[:, :, 0]
            if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
                raise ValueError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
            return self.transform(to_rgb(Image.fromarray(array))), None
        except Exception as err:
            return None, f"{label}: preprocessing failed ({type(err).__name__}: {err})"

    def _score(self, items: list) -> list[float]:
        import contextlib

        import torch

        device = self.model.device
        autocast = (torch.autocast(device_type=device.type, dtype=self.dtype)
                    if self.dtype is not None and device.type in ("cuda", "cpu") else contextlib.nullcontext())
        with autocast:
            return [float(v) for v in self.model.score_batch(self.collate(items)).tolist()]

    def __call__(self, batch):
        frame = None
        if not isinstance(batch, dict):  # a pandas DataFrame
            frame, batch = batch, {c: batch[c].to_numpy() for c in batch.columns}
        if self.image_column in batch:
            images = batch[self.image_column]
            labels = batch.get(self.path_column)
            count = len(images)
            work = [(lambda a=images[i], lab=(str(labels[i]) if labels is not None else f"image {i}"):
                     self._item_from_array(a, lab)) for i in range(count)]
        elif self.path_column in batch:
            names, sources = batch[self.path_column], batch.get(SOURCE_COLUMN)
            count = len(names)
            paths = [_input_from_row(names[i], sources[i] if sources is not None else None) for i in range(count)]
            work = [(lambda p=p: self._item_from_path(p)) for p in paths]
        else:
            raise KeyError(f"a batch needs an {self.image_column!r} or a {self.path_column!r} column, "
                           f"got {sorted(batch)}")
        loaded = list(self._pool.map(lambda f: f(), work)) if self._pool else [f() for f in work]
        scores = np.full(count, np.nan, dtype=np.float64)
        errors = np.array([err for _, err in loaded], dtype=object)
        good = [i for i, (item, err) in enumerate(loaded) if err is None]
        if good:
            scores[good] = self._score([loaded[i][0] for i in good])
        out = {k: v for k, v in batch.items() if k != SOURCE_COLUMN}
        out[SCORE_COLUMN], out[ERROR_COLUMN] = scores, errors
        if frame is not None:
            import pandas as pd

            return pd.DataFrame(out)
        return out

    def __del__(self):
        shards = getattr(getattr(self, "_local", None), "shards", None)
        if shards is not None:
            shards.close()


# --- pyica score --engine ray -------------------------------------------------------------------------

def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        return None
    return ray


def _start_ray(ray, num_cpus: int | None, num_gpus: int | None, quiet: bool) -> str:
    """Connect to the cluster of ``RAY_ADDRESS`` (or one already started), else start a local Ray with
    ``num_cpus``/``num_gpus``. Returns where it runs, for the metadata."""
    if ray.is_initialized():
        return "already initialised"
    address = os.environ.get("RAY_ADDRESS")
    common = dict(logging_level=logging.ERROR, log_to_driver=not quiet, include_dashboard=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its progress bars stay (not with -q)
    if address:
        ray.init(address=address, **common)
        return address
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **common)
    return "local"


def _plan_actors(ray, num_cpus: int | None, num_gpus: int | None) -> tuple[int, dict[str, float], str]:
    """``(actors, resources per actor, device)``: one actor per GPU with ``--num-gpus``, else one per CPU."""
    if num_gpus:
        return int(num_gpus), {"num_gpus": 1, "num_cpus": 1}, "cuda"
    cpus = num_cpus or int(ray.available_resources().get("CPU", 1)) or 1
    return max(1, int(cpus)), {"num_cpus": 1}, "cpu"


def score_command(args, *, identity, reads: list[str]) -> int:
    """``pyica score --engine ray``: the same rows, output rules and exit codes as ``pyica score``.

    ``identity(args)`` (called once the model is resolved) and ``reads``: what
    :class:`~pyica.writers.ScoreWriter` checks, from the CLI."""
    from ..score_run import EXIT_FAILED, score_run_meta, score_run_outcome  # one sidecar and exit rule for both engines
    from ..inputs import check_inputs
    from ..registry import DEFAULT_MODEL, trained_weights_card
    from ..runtime import torchrun_env
    from ..scoring import ScoreRecord, inputs_to_score
    from ..version import __version__
    from ..writers import ScoreWriter

    ray = _import_ray()
    if ray is None:
        print(f"pyica: error: {RAY_MISSING}", file=sys.stderr)
        return EXIT_FAILED
    if args.maps:
        raise ValueError("--maps is not available with --engine ray; score without --maps, or with --engine local")
    if torchrun_env()[1] > 1:
        raise ValueError("--engine ray runs on a Ray cluster, not under torchrun: start it once (ray job submit)")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the output, or replace it")
    if args.num_gpus and args.device not in ("auto", "cuda"):
        raise ValueError(f"--num-gpus puts the model on CUDA; --device {args.device} contradicts it")
    check_inputs(args.inputs)
    trained = trained_weights_card(args.weights) if args.weights else None
    requested, args.model = args.model, (trained["name"] if trained else args.model) or DEFAULT_MODEL
    shard_i, shard_n = args.shard or (0, 1)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    writer = ScoreWriter(args.output, args.format, resume=args.resume, overwrite=args.overwrite,
                         identity=identity(args), reads=reads, wait=args.wait)
    finished = False
    try:
        # The inputs are listed here, on the driver (names and archive offsets only; the pixels are read
        # by the actors): the order of the output, and what --resume skips, are decided in one place.
        counts = {"inputs": 0, "skipped": 0, "repeated": 0}
        todo = list(inputs_to_score(args.inputs, recursive=args.recursive, shard=(shard_i, shard_n),
                                    done=writer.done, counts=counts))
        where = _start_ray(ray, args.num_cpus, args.num_gpus, args.quiet)
        actors, resources, device = _plan_actors(ray, args.num_cpus, args.num_gpus)
        if not args.num_gpus and args.device != "auto":
            device = args.device  # e.g. mps on a one-machine Ray
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in input order
        context.enable_progress_bars = not args.quiet
        n_scored = n_errors = 0
        first_error = None
        t_scoring = time.perf_counter()
        if todo:
            # one block per batch (at most 20,000): Ray streams blocks to the actors with back-pressure
            blocks = max(1, min(max(math.ceil(len(todo) / args.batch_size), actors), 20_000))
            ds = ray.data.from_items(list(input_rows(todo)), override_num_blocks=blocks)
            del todo
            scored = ds.map_batches(
                ComplexityScorer, batch_size=args.batch_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                fn_constructor_kwargs=dict(model=requested if trained else args.model, device=device,
                                           precision=args.precision, weights=args.weights,
                                           allow_unverified_weights=args.allow_unverified_weights,
                                           max_pixels=args.max_pixels,
                                           load_threads=(args.workers or 4) if device.startswith("cuda") else 0),
                **resources)
            for batch in scored.iter_batches(batch_size=args.batch_size, batch_format="numpy", prefetch_batches=2):
                records = []
                for path, score, error in zip(batch[PATH_COLUMN], batch[SCORE_COLUMN], batch[ERROR_COLUMN]):
                    # a block without errors has a null-typed error column, which may come back as NaN
                    if not (isinstance(error, str) and error):
                        records.append(ScoreRecord(str(path), args.model, float(score), None))
                        n_scored += 1
                    else:
                        records.append(ScoreRecord(str(path), args.model, None, str(error)))
                        n_errors += 1
                        first_error = first_error or str(error)
                writer.write(records)
        seconds = time.perf_counter() - t0
        scoring_seconds = time.perf_counter() - t_scoring
        import torch

        meta = score_run_meta(args, trained=trained, writer=writer, counts=counts, n_scored=n_scored,
                           n_errors=n_errors, seconds=seconds, scoring_seconds=scoring_seconds, started=started)
        # seconds_scoring counts from the dataset's start: the actors' start and model loading included
        meta.update({
            "pyica_version": __version__,
            "torch_version": torch.__version__,
            "ray_version": ray.__version__,
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "engine": "ray",
            "ray": {"cluster": where, "actors": actors, "per_actor": resources,
                    "cluster_resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}},
            "device": device,
        })
        writer.close(finished=True, meta=meta)
        finished = True
    finally:
        if not finished:
            writer.close(finished=False)
    return score_run_outcome(args, writer, meta, first_error, detail=f" (ray: {actors} actors on {device})")
