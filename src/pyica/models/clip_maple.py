"""CLIP encoders with MaPLe-style deep multimodal prompts, for CM-SSA.

MaPLe ("Multi-modal Prompt Learning") learns a few context vectors per branch and per layer:

* **Text.** The prompt ``"X X X ... X <class words>."`` is tokenized; the ``n_ctx`` placeholder tokens sit at
  positions ``1..n_ctx`` (right after the start token). Layer-0 context vectors replace their word embeddings
  (before positional embeddings are added, as in CoOp); deeper context vectors replace the hidden states at those
  positions at the input of layers ``1..depth-1``.
* **Vision.** Layer-0 context vectors are appended after the patch tokens (after the position embeddings, before
  ``pre_layrnorm``, i.e. CLIP's ``ln_pre``); deeper ones replace those last ``n_ctx`` tokens at the input of
  layers ``1..depth-1``. The CLS token stays at position 0.

This is the behaviour of the CM-SSA / MaPLe reference code. ``transformers``' ``CLIPEncoder`` runs all layers in
one call and offers no hook to replace tokens between layers, so this module runs the layers itself, reusing the
``transformers`` sub-modules (embeddings, encoder layers, layer norms, projections). With no prompts the outputs
equal ``CLIPModel.get_image_features`` / ``get_text_features``.
"""

from __future__ import annotations

import inspect
import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _text_attention_mask(config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The causal (+ padding) mask that ``CLIPTextModel`` builds, in the format its layers expect.

    transformers >= 5 builds it with the public ``masking_utils.create_causal_mask`` (it may return ``None`` and rely
    on ``is_causal=True`` in SDPA). Where that is unavailable, fall back to an explicit additive 4D float mask, which
    both the eager and the SDPA attention accept.
    """
    try:
        from transformers.masking_utils import create_causal_mask

        return create_causal_mask(
            config=config, inputs_embeds=hidden, attention_mask=attention_mask, past_key_values=None
        )
    except (ImportError, TypeError):
        n, length = hidden.shape[:2]
        keep = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()[None, None]
        if attention_mask is not None:
            keep = keep & attention_mask.bool()[:, None, None, :]
        mask = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
        return mask.masked_fill(~keep, torch.finfo(hidden.dtype).min).expand(n, 1, length, length)


@lru_cache(maxsize=None)
def _takes_causal_mask(layer_cls: type) -> bool:
    return "causal_attention_mask" in inspect.signature(layer_cls.forward).parameters


def _run_layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """Call one ``CLIPEncoderLayer``.

    transformers 5: ``forward(hidden_states, attention_mask, **kwargs)`` returning a tensor; the causal flag travels
    as ``is_causal`` to the attention function. transformers 4.x took a separate ``causal_attention_mask`` and
    returned a tuple; there the combined 4D mask goes in ``attention_mask``.
    """
    if _takes_causal_mask(type(layer)):
        out = layer(hidden, mask, None)
    else:
        out = layer(hidden, mask, is_causal=True) if causal else layer(hidden, mask)
    return out[0] if isinstance(out, (tuple, list)) else out


def _check_prompts(prompts: list[torch.Tensor], layers: int, width: int, kind: str) -> None:
    if not 1 <= len(prompts) <= layers:
        raise ValueError(f"{kind} prompt depth must be in 1..{layers}, got {len(prompts)}")
    for p in prompts:
        if p.dim() != 2 or p.shape != prompts[0].shape or p.shape[1] != width:
            raise ValueError(f"{kind} prompts must all be (n_ctx, {width}); got {tuple(p.shape)}")


def _processor_config(name_or_path: str) -> dict[str, Any]:
    """preprocessor_config.json from a local folder or the local HF cache; {} when absent (never downloads)."""
    path: Any = Path(name_or_path) / "preprocessor_config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(name_or_path, "preprocessor_config.json")
        except Exception:  # invalid repo id etc.: the defaults are fine
            path = None
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return {}
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class CLIPPromptEncoders(nn.Module):
    """CLIP image and text encoders that accept MaPLe deep prompts (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_mean: tuple[float, float, float] = CLIP_MEAN,
        image_std: tuple[float, float, float] = CLIP_STD,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        cfg = model.config
        self.embed_dim: int = cfg.projection_dim
        self.text_width: int = cfg.text_config.hidden_size
        self.vision_width: int = cfg.vision_config.hidden_size
        self.text_layers: int = cfg.text_config.num_hidden_layers
        self.vision_layers: int = cfg.vision_config.num_hidden_layers
        self.image_size: int = cfg.vision_config.image_size
        self.max_length: int = cfg.text_config.max_position_embeddings
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.set_trainable(False)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, allow_download: bool = False, torch_dtype: torch.dtype | None = None
    ) -> CLIPPromptEncoders:
        """Load a CLIP checkpoint, offline first (e.g. "openai/clip-vit-base-patch32" or a local folder)."""
        from transformers import CLIPModel, CLIPTokenizer

        name = str(name_or_path)
        kwargs: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}

        def load(local_only: bool) -> tuple[Any, Any]:
            model = CLIPModel.from_pretrained(name, local_files_only=local_only, **kwargs)
            return model, CLIPTokenizer.from_pretrained(name, local_files_only=local_only)

        try:
            model, tokenizer = load(True)
        except (OSError, ValueError) as err:
            if not allow_download:
                raise RuntimeError(
                    f"CLIP model {name!r} is not available locally ({type(err).__name__}: {err}). Download it once "
                    f"with internet access (e.g. `huggingface-cli download {name}`), or pass a local folder that "
                    "holds the model and tokenizer files (save_pretrained), or use allow_download=True."
                ) from err
            model, tokenizer = load(False)
        proc = _processor_config(name)
        mean, std = proc.get("image_mean", CLIP_MEAN), proc.get("image_std", CLIP_STD)
        out = cls(model, tokenizer, tuple(mean), tuple(std))
        crop = proc.get("crop_size")
        crop = crop.get("height") if isinstance(crop, dict) else crop
        if isinstance(crop, int) and crop != out.image_size:  # the model only takes its own size
            warnings.warn(f"{name}: processor crop size {crop} != model image_size {out.image_size}; using the latter")
        return out

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def logit_scale_exp(self) -> torch.Tensor:
        return self.model.logit_scale.float().exp()

    def set_trainable(self, train_backbone: bool) -> None:
        """False: freeze every CLIP parameter (reference code); True: fine-tune them all (paper)."""
        self.model.requires_grad_(train_backbone)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def encode_image(
        self, pixel_values: torch.Tensor, vision_prompts: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, embed_dim) image features (not L2-normalised)."""
        vm = self.model.vision_model
        hidden = vm.embeddings(pixel_values)
        prompts = list(vision_prompts or [])
        if prompts:
            _check_prompts(prompts, self.vision_layers, self.vision_width, "vision")
            ctx = prompts[0].to(hidden.dtype).expand(hidden.shape[0], -1, -1)
            hidden = torch.cat([hidden, ctx], dim=1)
        hidden = vm.pre_layrnorm(hidden)
        n_ctx = prompts[0].shape[0] if prompts else 0
        for i, layer in enumerate(vm.encoder.layers):
            if 1 <= i < len(prompts):
                ctx = prompts[i].to(hidden.dtype).expand(hidden.shape[0], -1, -1)
                hidden = torch.cat([hidden[:, :-n_ctx], ctx], dim=1)
            hidden = _run_layer(layer, hidden, None, causal=False)
        pooled = vm.post_layernorm(hidden[:, 0])
        return self.model.visual_projection(pooled)

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        text_prompts: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Token ids (N, L) -> (N, embed_dim) text features (not L2-normalised); prompts fill positions 1..n_ctx."""
        tm = self.model.text_model
        prompts = list(text_prompts or [])
        embeds = tm.embeddings.token_embedding(input_ids)
        if prompts:
            _check_prompts(prompts, self.text_layers, self.text_width, "text")
            embeds = self._replace_ctx(embeds, prompts[0])
        hidden = tm.embeddings(inputs_embeds=embeds)  # adds the position embeddings
        mask = _text_attention_mask(tm.config, hidden, attention_mask)
        for i, layer in enumerate(tm.encoder.layers):
            if 1 <= i < len(prompts):
                hidden = self._replace_ctx(hidden, prompts[i])
            hidden = _run_layer(layer, hidden, mask, causal=True)
        hidden = tm.final_layer_norm(hidden)
        # EOS position as CLIPTextModel computes it: legacy configs (eos_token_id == 2) take the highest token id,
        # newer ones the first eos_token_id (padding may reuse the EOS id).
        ids = input_ids.to(device=hidden.device, dtype=torch.int)
        eos = tm.config.eos_token_id
        pos = ids.argmax(dim=-1) if eos == 2 else (ids == eos).int().argmax(dim=-1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]
        return self.model.text_projection(pooled)

    @staticmethod
    def _replace_ctx(hidden: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        n_ctx = ctx.shape[0]
        if hidden.shape[1] < n_ctx + 2:
            raise ValueError(f"text sequence ({hidden.shape[1]} tokens) too short for {n_ctx} prompt tokens")
        ctx = ctx.to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        return torch.cat([hidden[:, :1], ctx, hidden[:, 1 + n_ctx :]], dim=1)
