"""CLIPPromptEncoders: exact match with transformers without prompts, MaPLe prompt semantics, freezing, loading.

Everything runs on a tiny randomly initialised CLIP built in code and a byte-level BPE vocab written to tmp_path.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pyica.models.clip_maple import CLIPPromptEncoders  # noqa: E402

N_PATCHES = (32 // 8) ** 2
TEXTS = ["X X X X simple.", "X X X X very complex image."]  # different lengths: the first is padded


def _bytes_to_unicode() -> list[str]:
    """GPT-2 byte -> printable unicode table (what CLIP's byte-level BPE vocab is made of)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def _write_tokenizer_files(folder) -> None:
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def _tiny_clip(attn: str = "sdpa"):
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=32, bos_token_id=512, eos_token_id=513, pad_token_id=513,
        ),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.CLIPModel(config).eval()


def make_tiny_clip(folder) -> CLIPPromptEncoders:
    """A tiny random CLIP with a byte-level tokenizer written to ``folder`` (also used by test_cmssa)."""
    tok_dir = folder / "tok"
    tok_dir.mkdir(exist_ok=True)
    _write_tokenizer_files(tok_dir)
    return CLIPPromptEncoders(_tiny_clip(), transformers.CLIPTokenizer.from_pretrained(str(tok_dir)))


@pytest.fixture
def tokenizer(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    _write_tokenizer_files(folder)
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


@pytest.fixture
def enc(tokenizer):
    return CLIPPromptEncoders(_tiny_clip(), tokenizer)


def _features(out) -> torch.Tensor:
    # transformers 5 returns an output object (projection in pooler_output); older versions a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _prompts(depth: int, n_ctx: int, width: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n_ctx, width, generator=g) for _ in range(depth)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_matches_transformers_without_prompts(tokenizer, attn):
    enc = CLIPPromptEncoders(_tiny_clip(attn), tokenizer)
    pixels = torch.randn(3, 3, 32, 32)
    tok = enc.tokenize(TEXTS)
    assert set(tok) == {"input_ids", "attention_mask"} and tok["attention_mask"][0, -1] == 0  # padded
    with torch.no_grad():
        img, txt = enc.encode_image(pixels), enc.encode_text(**tok)
        ref_img = _features(enc.model.get_image_features(pixel_values=pixels))
        ref_txt = _features(enc.model.get_text_features(**tok))
    assert img.shape == (3, enc.embed_dim) and txt.shape == (2, enc.embed_dim)
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=1e-5)
    one = enc.tokenize(TEXTS[:1])  # no padding: SDPA gets no mask and must still be causal
    with torch.no_grad():
        ref = _features(enc.model.get_text_features(**one))
        torch.testing.assert_close(enc.encode_text(**one), ref, atol=1e-5, rtol=1e-5)


def test_fallback_text_mask_matches(enc, monkeypatch):
    """The explicit 4D mask used where masking_utils.create_causal_mask is unavailable gives the same features."""

    def unavailable(**kwargs):
        raise TypeError("old signature")

    monkeypatch.setattr(transformers.masking_utils, "create_causal_mask", unavailable)
    tok = enc.tokenize(TEXTS)
    with torch.no_grad():
        ref = _features(enc.model.get_text_features(**tok))
        torch.testing.assert_close(enc.encode_text(**tok), ref, atol=1e-5, rtol=1e-5)


def test_interface_attributes(enc):
    assert (enc.embed_dim, enc.text_width, enc.vision_width) == (16, 32, 32)
    assert (enc.text_layers, enc.vision_layers, enc.image_size) == (2, 2, 32)
    assert enc.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert enc.logit_scale is enc.model.logit_scale
    assert enc.logit_scale_exp().item() == pytest.approx(float(enc.model.logit_scale.exp()))


def test_vision_prompts_appended_and_replaced(enc):
    pixels = torch.randn(2, 3, 32, 32)
    full = _prompts(2, 3, enc.vision_width, seed=1)
    seen: dict[str, torch.Tensor] = {}
    layers = enc.model.vision_model.encoder.layers
    layers[1].register_forward_pre_hook(lambda m, args: seen.__setitem__("in1", args[0]))
    layers[1].register_forward_hook(
        lambda m, args, out: seen.__setitem__("out", out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        base = enc.encode_image(pixels)
        shallow = enc.encode_image(pixels, full[:1])
        deep = enc.encode_image(pixels, full)
        # CLS stays at position 0, prompt tokens sit after the patches, deep prompts replace them in layer 1
        assert seen["out"].shape[1] == 1 + N_PATCHES + 3
        torch.testing.assert_close(seen["in1"][:, -3:], full[1].expand(2, -1, -1))
        vm = enc.model.vision_model
        torch.testing.assert_close(deep, enc.model.visual_projection(vm.post_layernorm(seen["out"][:, 0])))
    assert not torch.allclose(base, shallow, atol=1e-4)
    assert not torch.allclose(shallow, deep, atol=1e-4)


def test_text_prompts_replace_placeholders(enc):
    other = enc.tokenize([t.replace("X", "Q") for t in TEXTS])
    tok = enc.tokenize(TEXTS)
    assert other["input_ids"].shape == tok["input_ids"].shape
    full = _prompts(2, 4, enc.text_width, seed=2)
    seen: dict[str, torch.Tensor] = {}
    enc.model.text_model.encoder.layers[1].register_forward_pre_hook(lambda m, a: seen.__setitem__("in1", a[0]))
    with torch.no_grad():
        base = enc.encode_text(**tok)
        assert not torch.allclose(base, enc.encode_text(**other), atol=1e-4)  # the placeholder word matters...
        for depth in (1, 2):  # ...but not once prompts replace it
            out = enc.encode_text(**tok, text_prompts=full[:depth])
            torch.testing.assert_close(out, enc.encode_text(**other, text_prompts=full[:depth]))
            assert not torch.allclose(out, base, atol=1e-4)
        torch.testing.assert_close(seen["in1"][:, 1:5], full[1].expand(2, -1, -1))
        assert not torch.allclose(enc.encode_text(**tok, text_prompts=full[:1]), out, atol=1e-4)
    with pytest.raises(ValueError):
        enc.encode_text(**tok, text_prompts=_prompts(3, 4, enc.text_width, seed=0))  # deeper than the model


def test_frozen_backbone_only_prompts_get_gradients(enc):
    tok = enc.tokenize(TEXTS)
    vp = [p.requires_grad_() for p in _prompts(2, 2, enc.vision_width, seed=3)]
    tp = [p.requires_grad_() for p in _prompts(2, 4, enc.text_width, seed=4)]
    enc.set_trainable(False)
    assert not any(p.requires_grad for p in enc.parameters())
    img, txt = enc.encode_image(torch.randn(2, 3, 32, 32), vp), enc.encode_text(**tok, text_prompts=tp)
    (enc.logit_scale_exp() * img @ txt.T).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vp + tp)
    assert all(p.grad is None for p in enc.parameters())
    enc.set_trainable(True)
    assert all(p.requires_grad for p in enc.parameters())


def test_low_precision_model_with_float32_prompts(enc):
    enc.model.to(torch.bfloat16)
    tok = enc.tokenize(TEXTS)
    with torch.no_grad():
        img = enc.encode_image(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16), _prompts(2, 2, 32, seed=5))
        txt = enc.encode_text(**tok, text_prompts=_prompts(2, 4, 32, seed=6))
    assert img.dtype == txt.dtype == torch.bfloat16 and torch.isfinite(img).all() and torch.isfinite(txt).all()


@pytest.mark.parametrize("name", ["missing-folder", "pyica-test-org/no-such-clip-model"])
def test_from_pretrained_missing_is_clear_and_fast(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = str(tmp_path / name) if name == "missing-folder" else name
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="allow_download=True") as info:
        CLIPPromptEncoders.from_pretrained(target)
    assert target in str(info.value)
    assert time.monotonic() - start < 10


def test_from_pretrained_round_trip(enc, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "clip"
    enc.model.save_pretrained(folder)
    enc.tokenizer.save_pretrained(folder)
    proc = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "crop_size": {"height": 32, "width": 32}}
    (folder / "preprocessor_config.json").write_text(json.dumps(proc), encoding="utf-8")
    loaded = CLIPPromptEncoders.from_pretrained(folder)
    assert loaded.image_mean == (0.5, 0.5, 0.5) and loaded.image_std == (0.25, 0.25, 0.25)
    assert not any(p.requires_grad for p in loaded.parameters())
    tok, pixels = enc.tokenize(TEXTS), torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.tokenize(TEXTS)["input_ids"], tok["input_ids"])
    vp, tp = _prompts(2, 2, 32, seed=7), _prompts(2, 4, 32, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(pixels, vp), enc.encode_image(pixels, vp))
        torch.testing.assert_close(loaded.encode_text(**tok, text_prompts=tp), enc.encode_text(**tok, text_prompts=tp))
