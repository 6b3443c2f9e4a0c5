"""Scene captions: one sentence per image for training CM-SSA's semantic alignment branch.

CM-SSA aligns its image features with a text embedding of what the scene shows. It needs a caption
per training image only; scoring needs none. Captions are made once per dataset and cached as JSONL
(``{"path", "caption", "error"}`` rows) by :func:`caption_dataset`; :func:`load_captions` reads them.

Providers (:func:`create_captioner`): ``instructblip`` (the paper's captioner), ``blip``, ``blip2``
(the paper's Table 5 comparison), ``file`` (captions made elsewhere) and ``imagenet-labels``, an
offline stand-in that names the top ImageNet classes of an EfficientNet-Lite; it needs no download.

The paper does not publish its InstructBLIP instruction nor what its short/medium/long captions
are. :data:`PRESETS` are therefore OUR choices, stated here so they can be reported: the instruction
text and a ``max_new_tokens`` budget each (long stops at 77 tokens, where CLIP's text encoder
truncates anyway). Hugging Face models load offline first (``local_files_only=True``); a model that
is not cached is an error unless ``allow_download=True``.
"""

from __future__ import annotations

import csv
import json
import os
import time
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

import torch

from .loading import load_image
from .progress import progress_bar
from .runtime import resolve_device
from .writers import OutputFile, read_scores, text_safe

__all__ = ["CaptionProvider", "PRESETS", "InstructBlipCaptioner", "BlipCaptioner", "Blip2Captioner", "FileCaptions",
           "ImageNetLabelCaptioner", "CAPTIONERS", "create_captioner", "caption_dataset", "load_captions",
           "imagenet_classes", "labels_sentence"]

#: preset -> (instruction, max_new_tokens). Our wording; the paper's is unpublished.
PRESETS: dict[str, tuple[str, int]] = {
    "short": ("Describe this image in one short sentence.", 20),
    "medium": ("Describe the scene in this image in one sentence: the objects, how many there are and how "
               "they are arranged, what is happening, and the background.", 40),
    "long": ("Describe this image in a detailed paragraph: every object and how many there are, their "
             "arrangement, colours and textures, any activity, and the background.", 77),
}


@runtime_checkable
class CaptionProvider(Protocol):
    """Anything that captions a batch of RGB PIL images; ``describe()`` is recorded beside the captions."""

    name: str

    def describe(self) -> dict[str, Any]: ...

    def caption(self, images: list) -> list[str]: ...


# --- Hugging Face BLIP family: one loading and generation path for all three

class _HFCaptioner:
    name = model_class = processor_class = ""  # set by subclasses: registry name, transformers class names

    def __init__(self, model_id: str, *, prompt: str | None, max_new_tokens: int, num_beams: int,
                 device=None, dtype=None, allow_download: bool = False, model=None, processor=None,
                 generate_kwargs: dict | None = None):
        if (model is None) != (processor is None):
            raise ValueError("pass both model= and processor=, or neither")
        self.model_id, self.prompt = model_id, prompt
        self.max_new_tokens, self.num_beams = int(max_new_tokens), int(num_beams)
        self.generate_kwargs = dict(generate_kwargs or {})
        self.device = resolve_device(device or "auto")
        if model is None:
            # half precision on GPU: the 7B InstructBLIP needs ~16 GB instead of ~32 GB
            dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
            model, processor = self._load(dtype, allow_download)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.dtype = next(self.model.parameters()).dtype

    def _load(self, dtype, allow_download: bool):
        import transformers

        model_cls = getattr(transformers, self.model_class)
        processor_cls = getattr(transformers, self.processor_class)

        def load(local_only: bool):
            processor = processor_cls.from_pretrained(self.model_id, local_files_only=local_only)
            return model_cls.from_pretrained(self.model_id, local_files_only=local_only, dtype=dtype), processor

        try:
            return load(True)
        except (OSError, ValueError) as err:
            if not allow_download:
                raise RuntimeError(
                    f"{self.name} model {self.model_id!r} is not in the local Hugging Face cache and downloads "
                    f"are off ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Fetch it once "
                    f"with allow_download=True (CLI: --allow-download) or `hf download {self.model_id}`, "
                    "or pass a local folder as the model id.") from err
        return load(False)

    def describe(self) -> dict[str, Any]:
        import transformers

        return {"provider": self.name, "model_id": self.model_id, "prompt": self.prompt,
                "max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "do_sample": False,
                **self.generate_kwargs, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "transformers_version": transformers.__version__}

    @torch.inference_mode()
    def caption(self, images: list) -> list[str]:
        if not images:
            return []
        call: dict[str, Any] = {"images": list(images), "return_tensors": "pt"}
        if self.prompt:
            call["text"] = [self.prompt] * len(images)  # same prompt, same length: no padding needed
        inputs = self.processor(**call)
        inputs = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                  for k, v in inputs.items()}
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                  do_sample=False, **self.generate_kwargs)
        # decoder-only language models return prompt + answer; keep the answer only
        ids = inputs.get("input_ids")
        if ids is not None and out.shape[1] >= ids.shape[1] and torch.equal(out[:, :ids.shape[1]].cpu(), ids.cpu()):
            out = out[:, ids.shape[1]:]
        return [" ".join(text.split()) for text in self.processor.batch_decode(out, skip_special_tokens=True)]


class InstructBlipCaptioner(_HFCaptioner):
    """InstructBLIP (the paper's captioner). ``instruction``/``max_new_tokens`` override the preset's."""

    name, model_class, processor_class = "instructblip", "InstructBlipForConditionalGeneration", "InstructBlipProcessor"

    def __init__(self, model_id: str = "Salesforce/instructblip-vicuna-7b", preset: str = "medium",
                 instruction: str | None = None, max_new_tokens: int | None = None, num_beams: int = 5,
                 device=None, allow_download: bool = False, model=None, processor=None, dtype=None,
                 repetition_penalty: float = 1.5):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}")
        self.preset = preset
        text, budget = PRESETS[preset]
        # repetition_penalty 1.5 and beam search follow the model card's example, which curbs loops
        super().__init__(model_id, prompt=instruction or text, max_new_tokens=max_new_tokens or budget,
                         num_beams=num_beams, device=device, dtype=dtype, allow_download=allow_download,
                         model=model, processor=processor,
                         generate_kwargs={"repetition_penalty": repetition_penalty})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "preset": self.preset}


class BlipCaptioner(_HFCaptioner):
    """BLIP captioning model; a ``prompt`` (e.g. "a picture of") is continued, so it starts the caption."""

    name, model_class, processor_class = "blip", "BlipForConditionalGeneration", "BlipProcessor"
    default_model_id = "Salesforce/blip-image-captioning-large"

    def __init__(self, model_id: str | None = None, prompt: str | None = None, max_new_tokens: int = 30,
                 num_beams: int = 3, device=None, allow_download: bool = False, model=None, processor=None, dtype=None):
        super().__init__(model_id or self.default_model_id, prompt=prompt, max_new_tokens=max_new_tokens,
                         num_beams=num_beams, device=device, dtype=dtype, allow_download=allow_download,
                         model=model, processor=processor)


class Blip2Captioner(BlipCaptioner):
    """BLIP-2 (OPT-2.7B by default); without a prompt it captions."""

    name, model_class, processor_class = "blip2", "Blip2ForConditionalGeneration", "Blip2Processor"
    default_model_id = "Salesforce/blip2-opt-2.7b"


# --- captions made elsewhere

class FileCaptions:
    """Captions from a CSV (``path``/``image`` + ``caption`` columns) or JSONL file, looked up by path.

    A path matches by exact string, then by resolved absolute path (relative entries are taken
    against the file's folder and the working directory), then by file name when that is unique.
    """

    name = "file"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._exact: dict[str, str] = {}
        self._resolved: dict[str, set[str]] = {}
        self._names: dict[str, set[str]] = {}
        for key, caption in self._rows():
            self._exact[key] = caption
            p = Path(key)
            for full in ([p] if p.is_absolute() else [self.path.parent / p, p]):
                self._resolved.setdefault(str(full.resolve()), set()).add(key)
            self._names.setdefault(p.name, set()).add(key)

    def _rows(self) -> Iterable[tuple[str, str]]:
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: captions file not found")
        if self.path.suffix.lower() in (".jsonl", ".ndjson"):
            rows = read_scores(self.path, "jsonl")  # tolerant JSONL reader (drops a torn last line)
        else:
            with open(self.path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        for row in rows:
            key = row.get("path") or row.get("image")
            if key is None or "caption" not in row:
                raise ValueError(f"{self.path}: rows need a 'path' (or 'image') and a 'caption' field, got {sorted(row)}")
            if row.get("caption") and not row.get("error"):
                yield str(key), str(row["caption"])

    def caption_path(self, path: str | os.PathLike) -> str:
        key = str(path)
        if key in self._exact:
            return self._exact[key]
        for table, probe in ((self._resolved, str(Path(key).resolve())), (self._names, Path(key).name)):
            hits = table.get(probe, set())
            if len(hits) == 1:
                return self._exact[next(iter(hits))]
        raise KeyError(f"{key}: no caption for this image in {self.path}")

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "file": str(self.path), "captions": len(self._exact)}

    def caption(self, images: list) -> list[str]:
        # images opened by PIL carry their file name; converted ones do not, so prefer caption_path()
        return [self.caption_path(getattr(im, "filename", "") or im.info.get("path", "")) for im in images]


# --- offline stand-in: ImageNet class names as a sentence

@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (first WordNet lemma of each synset), in class-index order."""
    text = (resources.files("pyica") / "assets" / "imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise RuntimeError(f"pyica/assets/imagenet_classes.txt has {len(names)} names, expected 1000")
    return names


_A_BEFORE_VOWEL = ("eu", "uni", "use", "uk", "one")  # vowel letter, consonant sound
_AN_BEFORE_H = ("hour", "honest", "heir", "honor")  # silent h
_PLURAL = {"binoculars", "sunglasses", "swimming trunks", "parallel bars"}


def _with_article(label: str) -> str:
    if label in _PLURAL:
        return label
    vowel = label[:1] in ("a", "e", "i", "o", "u") and not label.startswith(_A_BEFORE_VOWEL)
    return ("an " if vowel or label.startswith(_AN_BEFORE_H) else "a ") + label


def labels_sentence(labels: Iterable[str]) -> str:
    """``["tabby", "Egyptian cat"]`` -> ``"a photo showing a tabby and an egyptian cat."``"""
    items = [_with_article(x) for x in dict.fromkeys(label.lower() for label in labels)]
    if not items:
        return "a photo."
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"a photo showing {listed}."


class ImageNetLabelCaptioner:
    """Offline captions: the top-k ImageNet classes of an EfficientNet-Lite, as one sentence.

    Not a scene description (no counts, layout or activity), but it needs no download and names
    the main objects, which is what the alignment branch mostly uses.
    """

    name = "imagenet-labels"
    _SIZES = {"lite0": 224, "lite2": 260}  # native input sizes of the ImageNet checkpoints

    def __init__(self, variant: str = "lite0", top_k: int = 3, device=None):
        from .models.effnet import load_backbone

        if variant not in self._SIZES:
            raise ValueError(f"variant must be one of {sorted(self._SIZES)}, not {variant!r}")
        if not 1 <= int(top_k) <= 1000:
            raise ValueError(f"top_k must be in 1..1000, not {top_k}")
        self.variant, self.top_k = variant, int(top_k)
        self.device = resolve_device(device or "auto")
        self.net = load_backbone(variant).to(self.device)
        self.labels = imagenet_classes()

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "backbone": f"efficientnet-{self.variant}", "top_k": self.top_k,
                "input_size": self._SIZES[self.variant], "template": "a photo showing <label>, <label> and <label>.",
                "device": str(self.device)}

    def top_classes(self, images: list) -> list[list[int]]:
        from .models.effnet import SquareResize, normalize_tf

        resize = SquareResize(self._SIZES[self.variant])
        x = normalize_tf(torch.stack([resize(im) for im in images])).to(self.device)
        with torch.inference_mode():
            return self.net(x).topk(self.top_k, dim=1).indices.tolist()

    def caption(self, images: list) -> list[str]:
        if not images:
            return []
        return [labels_sentence(self.labels[i] for i in row) for row in self.top_classes(images)]


# --- registry and dataset captioning
CAPTIONERS = {"instructblip": InstructBlipCaptioner, "blip": BlipCaptioner, "blip2": Blip2Captioner,
              "imagenet-labels": ImageNetLabelCaptioner, "file": FileCaptions}


def create_captioner(name: str, **kwargs) -> CaptionProvider:
    """A provider by registry name; ``None``-valued keyword arguments fall back to the defaults."""
    if name not in CAPTIONERS:
        raise ValueError(f"unknown captioner {name!r}; choose one of {', '.join(CAPTIONERS)}")
    return CAPTIONERS[name](**{k: v for k, v in kwargs.items() if v is not None})


def _caption_batch(provider, paths: list[str], max_pixels: int | None) -> list[dict[str, Any]]:
    """Rows for one batch, in input order; a failing image gets an error row, the rest go on."""
    rows: dict[int, dict[str, Any]] = {}
    by_path = getattr(provider, "caption_path", None)  # path-keyed providers need no decoding
    good: list[tuple[int, Any]] = []
    for i, path in enumerate(paths):
        try:
            if by_path is not None:
                rows[i] = {"path": path, "caption": by_path(path), "error": None}
            else:
                good.append((i, load_image(path, max_pixels)))
        except (KeyError, ValueError, OSError) as err:
            rows[i] = {"path": path, "caption": None, "error": err.args[0] if isinstance(err, KeyError) else str(err)}
    if good:
        try:
            results = provider.caption([im for _, im in good])
        except Exception:  # one odd image must not fail its batch: retry one by one to find it
            results = [_caption_one(provider, im) for _, im in good]
            if len(good) > 1 and all(isinstance(c, Exception) for c in results):
                raise results[0]  # every image failing alone: the provider is broken, not the images
        for (i, _), cap in zip(good, results):
            failed = isinstance(cap, Exception)
            rows[i] = {"path": paths[i], "caption": None if failed else str(cap),
                       "error": f"{paths[i]}: captioning failed ({type(cap).__name__}: {cap})" if failed else None}
    return [rows[i] for i in sorted(rows)]


def _caption_one(provider, image):
    try:
        return provider.caption([image])[0]
    except Exception as err:
        return err


def caption_dataset(paths: Iterable[str | os.PathLike], provider: CaptionProvider, out_path: str | os.PathLike, *,
                    batch_size: int = 8, resume: bool = True, progress: bool = True,
                    max_pixels: int | None = None) -> dict[str, Any]:
    """Caption ``paths`` into JSONL ``out_path``; returns the summary also written to ``OUT.meta.json``.

    Rows go to ``OUT.part``, flushed after every batch; ``resume`` skips paths already in
    ``OUT.part`` or a finished ``OUT`` (error rows included: rerun with ``resume=False`` to retry
    them); resuming a file another captioner (or other caption settings) wrote is refused, naming what
    differs. At the end ``OUT.part`` is renamed to ``OUT`` atomically; ``resume=False`` replaces ``OUT``
    then. The output follows :class:`~pyica.writers.OutputFile`'s rules (lock, identity, atomic finish).
    """
    from .version import __version__

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    out = Path(out_path)
    all_paths = [str(p) for p in paths]
    # who writes the captions; where it runs does not change them
    described = provider.describe()
    identity = {"captioner": {k: v for k, v in described.items()
                              if k not in ("device", "dtype", "transformers_version", "captions")}}
    output = OutputFile(out, "jsonl", identity=identity, resume=resume, overwrite=not resume)
    done = output.done
    unique = list(dict.fromkeys(all_paths))
    todo = [p for p in unique if text_safe(p) not in done]
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    n_ok = n_err = 0
    bar = progress_bar(len(todo), progress)
    finished = False
    try:
        for start in range(0, len(todo), batch_size):
            rows = _caption_batch(provider, todo[start:start + batch_size], max_pixels)
            rows = [{**r, "path": text_safe(r["path"]), "error": text_safe(r["error"]) if r["error"] else None}
                    for r in rows]
            output.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), len(rows))
            n_err += sum(r["error"] is not None for r in rows)
            n_ok += sum(r["error"] is None for r in rows)
            bar.update(len(rows))
        seconds = time.perf_counter() - t0
        summary = {"output": str(out), "provider": described, "inputs": len(all_paths),
                   "skipped_already_done": len(unique) - len(todo), "captioned": n_ok, "errors": n_err,
                   "seconds": round(seconds, 3),
                   "images_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
                   "batch_size": batch_size, "pyica_version": __version__,
                   "started_utc": started.isoformat(timespec="seconds"),
                   "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        output.finish(summary)
        finished = True
    finally:
        bar.close()
        if not finished:
            output.abort()
    return summary


def load_captions(path: str | os.PathLike) -> dict[str, str]:
    """``{path: caption}`` from a file written by :func:`caption_dataset` (error rows skipped; later rows win)."""
    return {str(r["path"]): r["caption"] for r in read_scores(path, "jsonl") if r.get("caption") and not r.get("error")}
