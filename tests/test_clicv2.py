"""CLICv2 and our ViT: shifted patchify geometry, losses against explicit loops, momentum update,
entropy targets, masked-only reconstruction, gradient flow and the ablation switches.

Everything runs on a tiny randomly initialised ViT (dim 32, depth 2, heads 2) with 8 px patches
on 32 px images, so the whole file takes a few seconds on CPU.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pyica.models.clicv2 import (DIRECTIONS, CLICv2, CLICv2Config, PatchAugConfig, augment_patches,
                                 imagewise_info_nce, mask_count, masked_reconstruction_loss, patch_entropy,
                                 patch_frequency_target, patch_pixels_target, patchify, patchwise_info_nce,
                                 random_masking, reconstruction_target, shifted_patchify, unpatchify)
from pyica.models.vit import ViT, vit_config

TINY = {"dim": 32, "depth": 2, "heads": 2}
P, S = 8, 32  # patch and image size -> G = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kwargs) -> CLICv2Config:
    base = dict(arch="vit_tiny", patch_size=P, image_size=S, encoder_overrides=TINY, proj_hidden=32, proj_dim=16,
                decoder_dim=16, decoder_depth=1, decoder_heads=2)
    base.update(kwargs)
    return CLICv2Config(**base)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, S, S, generator=gen(seed))


# --- shifted patchify ----------------------------------------------------------------------------

def test_shifted_patchify_shapes_and_shift_vectors():
    x = images(4)
    patches, shifts = shifted_patchify(x, P, 0.25, gen(1))
    assert patches.shape == (4, 16, 3, P, P) and shifts.shape == (4, 16, 2)
    assert patches.min() >= 0 and patches.max() <= 1
    units = set(DIRECTIONS.values())
    largest = math.floor(0.25 * P)
    for dy, dx in shifts.reshape(-1, 2).tolist():
        s = max(abs(dy), abs(dx))
        assert 1 <= s <= largest
        assert (dy // s, dx // s) in units and dy in (-s, 0, s) and dx in (-s, 0, s)
    # with 32 px patches and max_shift 0.25 the range is 1..8 px and all 8 directions occur
    big = torch.rand(8, 3, 64, 64, generator=gen(2))
    _, shifts = shifted_patchify(big, 32, 0.25, gen(3), augment=False)
    mags = shifts.abs().amax(-1)
    assert mags.min() >= 1 and mags.max() <= 8
    _, many = shifted_patchify(torch.rand(64, 3, 32, 32), 8, 0.25, gen(4), augment=False)
    assert {tuple((v // v.abs().max()).tolist()) for v in many.reshape(-1, 2)} == units


def test_shifted_patch_is_the_plain_patch_moved_with_zero_fill():
    x = images(2)
    plain = patchify(x, P)
    shifted, shifts = shifted_patchify(x, P, 0.5, gen(5), augment=False)
    for b in range(2):
        for g in range(16):
            dy, dx = shifts[b, g].tolist()
            expected = torch.zeros(3, P, P)
            for y in range(P):
                for xx in range(P):
                    sy, sx = y - dy, xx - dx
                    if 0 <= sy < P and 0 <= sx < P:
                        expected[:, y, xx] = plain[b, g, :, sy, sx]
            assert torch.equal(shifted[b, g], expected)


def test_two_views_pair_patches_by_position():
    x = images(2)
    a, sa = shifted_patchify(x, P, 0.0, gen(6), augment=False)
    b, sb = shifted_patchify(x, P, 0.0, gen(7), augment=False)
    assert torch.equal(a, b) and not sa.any() and not sb.any()
    for g in range(16):
        r, c = divmod(g, S // P)
        assert torch.equal(a[:, g], x[:, :, r * P:(r + 1) * P, c * P:(c + 1) * P])
    assert torch.equal(unpatchify(a, (4, 4)), x)
    # with augmentation and shifts the views differ, but are reproducible from the generator
    v1, s1 = shifted_patchify(x, P, 0.25, gen(8))
    v2, s2 = shifted_patchify(x, P, 0.25, gen(8))
    v3, _ = shifted_patchify(x, P, 0.25, gen(9))
    assert torch.equal(v1, v2) and torch.equal(s1, s2) and not torch.equal(v1, v3)


def test_patch_augmentation_is_per_patch_and_in_range():
    x = patchify(images(2), P).flatten(0, 1)
    flip_only = PatchAugConfig(flip_p=1.0, jitter_p=0.0, blur_p=0.0)
    assert torch.equal(augment_patches(x, flip_only, gen(0)), x.flip(-1))
    out = augment_patches(x, PatchAugConfig(flip_p=0.0, jitter_p=1.0, blur_p=1.0), gen(1))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    # each patch gets its own factors: the brightness ratio differs between patches
    bright = PatchAugConfig(flip_p=0.0, jitter_p=1.0, contrast=0.0, saturation=0.0, blur_p=0.0, brightness=0.3)
    const = torch.full((8, 3, P, P), 0.5)
    ratios = augment_patches(const, bright, gen(2))[:, 0, 0, 0] / 0.5
    assert ratios.unique().numel() == 8 and ((ratios >= 0.7) & (ratios <= 1.3)).all()
    # blur keeps a constant patch constant (borders are renormalised)
    blur = PatchAugConfig(flip_p=0.0, jitter_p=0.0, blur_p=1.0)
    torch.testing.assert_close(augment_patches(const, blur, gen(3)), const)


# --- contrastive losses against loops ------------------------------------------------------------

def test_patchwise_info_nce_matches_loop():
    b, g, d, tau = 3, 5, 4, 0.2
    q = torch.randn(b, 2, d, generator=gen(0))
    k = torch.randn(b, g, d, generator=gen(1))
    q_index = torch.tensor([[0, 3], [1, 4], [2, 3]])
    qn, kn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    losses = []
    for i in range(b):
        for j in range(q.shape[1]):
            logits = torch.tensor([float(qn[i, j] @ kn[i2, j2]) / tau for i2 in range(b) for j2 in range(g)])
            pos = i * g + int(q_index[i, j])
            losses.append(-(logits[pos] - torch.logsumexp(logits, 0)))
    expected = torch.stack(losses).mean()
    torch.testing.assert_close(patchwise_info_nce(q, k, q_index, tau), expected, rtol=1e-5, atol=1e-6)


def test_imagewise_info_nce_matches_loop():
    b, d, tau = 4, 6, 0.2
    q, k = torch.randn(b, d, generator=gen(2)), torch.randn(b, d, generator=gen(3))
    qn, kn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    losses = []
    for i in range(b):
        logits = torch.tensor([float(qn[i] @ kn[j]) / tau for j in range(b)])
        losses.append(-torch.log_softmax(logits, 0)[i])
    torch.testing.assert_close(imagewise_info_nce(q, k, tau), torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)


# --- momentum encoder ----------------------------------------------------------------------------

def test_momentum_update_is_exact_and_key_gets_no_gradients():
    model = CLICv2(tiny_config(momentum=0.9))
    with torch.no_grad():  # make query and key differ
        for p in itertools.chain(model.encoder.parameters(), model.projector.parameters()):
            p.add_(torch.randn(p.shape, generator=gen(1)))
    pairs = list(zip(itertools.chain(model.encoder.parameters(), model.projector.parameters()),
                     itertools.chain(model.key_encoder.parameters(), model.key_projector.parameters())))
    expected = [0.9 * k.detach().clone() + (1 - 0.9) * q.detach().clone() for q, k in pairs]
    model.momentum_update()
    assert all(torch.equal(k, e) for (_, k), e in zip(pairs, expected))
    assert not any(p.requires_grad for p in model.key_encoder.parameters())
    assert not any(p.requires_grad for p in model.key_projector.parameters())


# --- masked entropy modelling --------------------------------------------------------------------

def test_entropy_target_values():
    const = torch.full((3, 4, 4), 0.3)
    two = torch.zeros(3, 4, 4)
    two[:, :2] = 1.0  # half black, half white
    ramp = (torch.arange(256, dtype=torch.float32) / 255).view(16, 16).expand(3, 16, 16)  # 256 grey levels once each
    torch.testing.assert_close(patch_entropy(const), torch.tensor(0.0))
    torch.testing.assert_close(patch_entropy(two), torch.tensor(1 / 8))
    torch.testing.assert_close(patch_entropy(ramp), torch.tensor(1.0))
    batch = torch.stack([torch.stack([const, two]), torch.stack([two, const])])  # (2, 2, 3, 4, 4)
    torch.testing.assert_close(patch_entropy(batch), torch.tensor([[0.0, 0.125], [0.125, 0.0]]))
    torch.testing.assert_close(patch_entropy(ramp, bins=16), torch.tensor(1.0))  # 16 levels per bin
    # other targets: shapes and per-patch normalisation
    p = torch.rand(2, 5, 3, P, P)
    assert reconstruction_target(p, "entropy").shape == (2, 5, 1)
    pix, freq = patch_pixels_target(p), patch_frequency_target(p)
    assert pix.shape == (2, 5, 3 * P * P) and freq.shape == (2, 5, P * (P // 2 + 1))
    torch.testing.assert_close(pix.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)


def test_only_masked_patches_enter_reconstruction_loss():
    keep, mask = random_masking(4, 16, 0.6, gen(0))
    assert (mask.sum(1) == round(0.6 * 16)).all() and keep.shape == (4, 16 - round(0.6 * 16))
    assert not mask.gather(1, keep).any()  # keep and mask agree
    assert mask_count(49, 0.6) == 29 and mask_count(16, 0.6) == 10
    pred, target = torch.rand(4, 16, 3, generator=gen(1)), torch.rand(4, 16, 3, generator=gen(2))
    loss = masked_reconstruction_loss(pred, target, mask)
    pred2, target2 = pred.clone(), target.clone()
    pred2[~mask] = 100.0
    target2[~mask] = -7.0
    assert torch.equal(masked_reconstruction_loss(pred2, target2, mask), loss)
    per_patch = ((pred - target) ** 2).mean(-1)
    expected_sum = sum(per_patch[i][mask[i]].sum() for i in range(4)) / 4  # Eq. 11, averaged over images
    torch.testing.assert_close(loss, expected_sum)
    torch.testing.assert_close(masked_reconstruction_loss(pred, target, mask, "mean"), per_patch[mask].mean())
    with pytest.raises(ValueError, match="reduction"):
        masked_reconstruction_loss(pred, target, mask, "max")


# --- the full model ------------------------------------------------------------------------------

def test_forward_backward_reaches_query_side_only():
    model = CLICv2(tiny_config())
    loss, parts = model(images(3), gen(0))
    assert torch.isfinite(loss) and set(parts) == {"loss", "contrastive", "reconstruction"}
    assert parts["loss"] == pytest.approx(parts["contrastive"] + 2.0 * parts["reconstruction"], rel=1e-5)
    loss.backward()
    for module in (model.encoder, model.projector, model.predictor, model.decoder):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), type(module).__name__
        assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.key_encoder.parameters())
    assert all(p.grad is None for p in model.key_projector.parameters())
    # forward is reproducible from the generator
    model2 = CLICv2(tiny_config())
    model2.load_state_dict(model.state_dict())
    assert model2(images(3), gen(0))[1]["loss"] == pytest.approx(parts["loss"], rel=1e-5)


@pytest.mark.parametrize("use_shift,use_mask,use_mem,contrast",
                         list(itertools.product([True, False], [True, False], [True, False], ["patch", "image"])))
def test_ablation_switches_run(use_shift, use_mask, use_mem, contrast):
    model = CLICv2(tiny_config(use_shift=use_shift, use_mask=use_mask, use_mem=use_mem, contrast=contrast))
    loss, parts = model(images(2), gen(1))
    assert torch.isfinite(loss)
    assert ("reconstruction" in parts) == (use_mask and use_mem)
    assert (model.decoder is not None) == (use_mask and use_mem)
    loss.backward()


@pytest.mark.parametrize("target", ["pixels", "frequency"])
def test_other_reconstruction_targets_run(target):
    loss, parts = CLICv2(tiny_config(target=target))(images(2), gen(2))
    assert torch.isfinite(loss) and parts["reconstruction"] > 0


def test_config_validation():
    for bad in (dict(target="edges"), dict(contrast="pixel"), dict(mask_ratio=1.0), dict(max_shift=1.0),
                dict(temperature=0.0), dict(arch="vit_huge"), dict(decoder_dim=15), dict(image_size=36)):
        with pytest.raises(ValueError):
            tiny_config(**bad)
    assert CLICv2Config().num_patches == 49 and CLICv2Config().num_masked == 29


# --- ViT -----------------------------------------------------------------------------------------

def tiny_vit() -> ViT:
    return ViT(vit_config("vit_tiny", patch_size=P, image_size=S, **TINY)).eval()


def test_vit_tokens_keep_and_patch_input():
    vit = tiny_vit()
    x = torch.randn(2, 3, S, S, generator=gen(0))
    full = vit.forward_tokens(x)
    assert full.shape == (2, 17, 32)
    keep = torch.tensor([[0, 5, 9], [2, 3, 15]])
    kept = vit.forward_tokens(x, keep)
    assert kept.shape == (2, 4, 32)
    # pre-cut patches == the image they came from, with and without keep
    torch.testing.assert_close(vit.forward_tokens_from_patches(patchify(x, P)), full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vit.forward_tokens_from_patches(patchify(x, P), keep), kept, rtol=1e-4, atol=1e-5)
    # dropped patches are never seen: changing one that image 0 does not keep changes nothing
    x2 = x.clone()
    x2[:, :, :P, P:] = 0  # patch 1 is not kept in image 0
    torch.testing.assert_close(vit.forward_tokens(x2, keep)[0], kept[0])


def test_vit_feature_map_and_position_interpolation():
    vit = tiny_vit()
    x = torch.randn(2, 3, S, S, generator=gen(1))
    fmap = vit.feature_map(x)
    assert fmap.shape == (2, 32, 4, 4) and vit.pooled(x).shape == (2, 32)
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), vit.forward_tokens(x)[:, 1:])
    big = torch.randn(1, 3, 48, 40, generator=gen(2))
    assert vit.feature_map(big).shape == (1, 32, 6, 5)
    torch.testing.assert_close(vit.patch_pos_embed((4, 4)), vit.pos_embed[:, 1:])  # same grid: unchanged
    assert vit.patch_pos_embed((6, 5)).shape == (1, 30, 32)
    with pytest.raises(ValueError):
        vit.forward_tokens(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError):
        vit_config("vit_small", patch_size=16, image_size=224, heads=5)
    assert vit_config("vit_base", patch_size=32).dim == 768
