"""CM-SSA paper-fidelity pins (issue 22): each test fails when the detail it names is changed.

* the caption encoder learns from L_A when the backbone trains (the paper fine-tunes CLIP; its
  ``f_text`` reads the captions, Eq. 3 / 8), and nothing there learns when it is frozen;
* (a) an image's score is the mean of its patch scores (Sec. 4.2, "patch-based evaluation"),
  in the model's forward and in the trainer's cached evaluation;
* (b) in a training batch each caption is paired with its own image (Eq. 8's diagonal s_ii);
* (c) where the layer-0 MaPLe prompts sit in the token sequences;
* (d) the orientation of the level prompts (listed simplest first, Sec. 3.2; Eq. 6 reads k=1);
* (e) the logit scales: CLIP's (about 100) in the complexity softmax (reference code; Eq. 6
  prints none), 1 in the alignment softmax (Eq. 8 as printed).

Tiny randomly initialised encoders built in code, as in tests/test_cmssa.py and test_clip_maple.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

transformers = pytest.importorskip("transformers")

from pyica.models.cmssa import (CMSSA, LEVEL_NAMES, CMSSAConfig, alignment_scores,  # noqa: E402
                                complexity_readout)
from pyica.training.train_cmssa import CMSSATrainer, TrainRecipe  # noqa: E402


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from pyica.models.cmssa_offline import minilm_path

    return transformers.AutoTokenizer.from_pretrained(minilm_path())


def tiny_clip_cmssa(tmp_path, **config) -> CMSSA:
    from test_clip_maple import make_tiny_clip

    encoders = make_tiny_clip(tmp_path)
    return CMSSA(encoders, CMSSAConfig(**{"n_ctx": 2, "depth": 2, "patch_size": encoders.image_size, **config}))


CAPTIONS = ["a red car", "two dogs", "a busy market"]


# --- the caption encoder learns when the backbone does -------------------------------------------

@pytest.mark.parametrize("train_backbone", [True, False])
def test_alignment_loss_reaches_the_caption_encoder_only_when_the_backbone_trains(tmp_path, train_backbone):
    # beta 0: the level prompts (the other user of the text encoder) contribute exactly zero gradient,
    # so whatever reaches the text transformer comes from L_A through the captions
    model = tiny_clip_cmssa(tmp_path, train_backbone=train_backbone, alpha=1.0, beta=0.0).train()
    size = model.encoders.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    caps = model.caption_embeddings(model.caption_features(CAPTIONS))
    loss, parts = model.training_step(pixels, torch.tensor([0.1, 0.5, 0.9]), caps)
    assert parts["alignment"] > 0
    loss.backward()
    text = model.encoders.model.text_model
    probes = [text.encoder.layers[0].mlp.fc1.weight, text.embeddings.token_embedding.weight,
              model.encoders.model.text_projection.weight]
    if train_backbone:
        assert caps.requires_grad
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in probes)
    else:
        assert not caps.requires_grad
        assert all(p.grad is None for p in probes)


def test_offline_caption_encoder_learns_when_fine_tuned(minilm_tokenizer):
    from test_cmssa import tiny_offline

    for train_backbone in (True, False):
        model = CMSSA(tiny_offline(minilm_tokenizer), CMSSAConfig(n_ctx=2, depth=1, train_backbone=train_backbone,
                                                                  beta=0.0)).train()
        pixels = model.normalize(torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8))
        caps = model.caption_embeddings(model.caption_features(CAPTIONS))
        model.training_step(pixels, torch.rand(3), caps)[0].backward()
        grad = model.encoders.text_model.encoder.layer[0].intermediate.dense.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == train_backbone


# --- (a) image score = mean of patch scores --------------------------------------------------------

def _patch_scores(model: CMSSA, patches: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        emb = model.complexity_image_embeddings(model.normalize(patches))
        return model.complexity_scores(emb, model.level_embeddings())


def test_forward_scores_an_image_by_the_mean_of_its_patch_scores(tmp_path):
    model = tiny_clip_cmssa(tmp_path, prompt_init_std=1.0).eval()
    size = model.encoders.image_size
    g = torch.Generator().manual_seed(1)
    batch = [torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g) for n in (3, 4)]
    with torch.no_grad():
        scores = model(batch)
    per_patch = [_patch_scores(model, p) for p in batch]
    assert all(len(set(p.tolist())) == len(p) for p in per_patch)  # distinct: mean != max != median
    for got, p in zip(scores, per_patch):
        assert got.item() == pytest.approx(p.mean().item(), rel=1e-5, abs=1e-7)
        assert abs(got.item() - p.max().item()) > 1e-6 and abs(got.item() - p.median().item()) > 1e-6


def test_trainer_evaluation_is_the_mean_of_patch_scores(minilm_tokenizer, tmp_path):
    from test_cmssa import _toy_dataset, tiny_offline

    ds = _toy_dataset(tmp_path, n=3)
    config = CMSSAConfig(n_ctx=2, depth=1, patch_size=64, patch_stride=16, max_patches=4, eval_short_side=96,
                         prompt_init_std=1.0, branches="complexity")
    trainer = CMSSATrainer(lambda: None, TrainRecipe(num_workers=0))
    torch.manual_seed(0)
    trainer.model = model = CMSSA(tiny_offline(minilm_tokenizer), config).eval()
    assert trainer._cacheable(model)  # the cached path (training/train_cmssa.py score_files)
    scores, errors = trainer.score_files(ds.full_paths())
    assert not errors
    for got, path in zip(scores, ds.full_paths()):
        per_patch = _patch_scores(model, model.transform(Image.open(path).convert("RGB")))
        assert len(per_patch) == 4 and len(set(per_patch.tolist())) == 4
        assert got == pytest.approx(per_patch.mean().item(), rel=1e-4)
        assert abs(got - per_patch.max().item()) > 1e-5


# --- (b) captions stay paired with their images ----------------------------------------------------

def test_training_pairs_each_caption_with_its_own_image(minilm_tokenizer, tmp_path):
    from test_cmssa import _toy_dataset, tiny_offline

    ds = _toy_dataset(tmp_path, n=12)
    paths = ds.full_paths()
    captions = {p: f"caption number {i} of a picture" for i, p in enumerate(paths)}
    config = CMSSAConfig(n_ctx=2, depth=1, patch_size=64, patch_stride=64, max_patches=1, eval_short_side=96)
    seen: list[dict] = []

    def build() -> CMSSA:
        model = CMSSA(tiny_offline(minilm_tokenizer), config)
        embed, step = model.caption_embeddings, model.training_step

        def caption_embeddings(features):
            seen.append({"captions": features.detach().clone()})
            return embed(features)

        def training_step(images, targets, caption_emb, **kwargs):
            seen[-1].update(images=images.detach().clone(), targets=targets.clone())
            return step(images, targets, caption_emb, **kwargs)

        model.caption_embeddings, model.training_step = caption_embeddings, training_step
        return model

    trainer = CMSSATrainer(build, TrainRecipe(epochs=1, batch_size=4, train_short_side=96, train_crops=1,
                                              num_workers=0, seed=3), captions=captions)
    trainer.fit_dataset(ds)
    with torch.no_grad():  # every caption's features, encoded one at a time (frozen MiniLM)
        own_caption = torch.cat([trainer.model.caption_features([captions[p]]) for p in paths])
    crops = torch.stack([torch.from_numpy(trainer._crop_cache[(p, 0)]) for p in paths])
    targets = torch.tensor([(s - 0.0) / 100.0 for s in ds.scores])
    assert len(seen) == 3 and sum(len(s["images"]) for s in seen) == 12
    shuffled = False
    for s in seen:
        image_of = torch.cdist(s["images"].float(), crops.float()).argmin(1)
        caption_of = torch.cdist(s["captions"].float(), own_caption.float()).argmin(1)
        assert torch.equal(image_of, caption_of)  # row i: image of path k, caption of path k
        torch.testing.assert_close(s["targets"], targets[image_of].float())
        shuffled |= image_of.tolist() != sorted(image_of.tolist())
    assert shuffled  # the batches really were shuffled, so pairing is not an accident of order


# --- (c) layer-0 MaPLe prompt placement ------------------------------------------------------------

def test_layer0_vision_prompts_follow_the_patches_after_positions_before_ln_pre(tmp_path):
    from test_clip_maple import make_tiny_clip

    enc = make_tiny_clip(tmp_path)
    vm = enc.model.vision_model
    seen = {}
    vm.encoder.layers[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("in0", a[0]))
    pixels = torch.randn(2, 3, 32, 32)
    prompts = [torch.randn(3, enc.vision_width) for _ in range(2)]
    with torch.no_grad():
        enc.encode_image(pixels, prompts)
        tokens = vm.embeddings(pixels)  # [CLS, patches] + position embeddings
        expected = vm.pre_layrnorm(torch.cat([tokens, prompts[0].expand(2, -1, -1)], 1))
    assert seen["in0"].shape[1] == tokens.shape[1] + 3
    torch.testing.assert_close(seen["in0"], expected)


def test_layer0_text_prompts_replace_tokens_1_to_n_ctx_before_positions(tmp_path):
    from test_clip_maple import make_tiny_clip

    enc = make_tiny_clip(tmp_path)
    tm = enc.model.text_model
    seen = {}
    tm.encoder.layers[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("in0", a[0]))
    tok = enc.tokenize(["X X X simple complexity photo."])
    prompts = [torch.randn(3, enc.text_width) for _ in range(2)]
    with torch.no_grad():
        enc.encode_text(**tok, text_prompts=prompts)
        ids = tok["input_ids"]
        words = tm.embeddings.token_embedding(ids)[0]
        positions = tm.embeddings.position_embedding.weight[: ids.shape[1]]
    h = seen["in0"][0]
    torch.testing.assert_close(h[0], words[0] + positions[0])  # start token untouched
    torch.testing.assert_close(h[1:4], prompts[0] + positions[1:4])  # context at 1..n_ctx, positions added
    torch.testing.assert_close(h[4:], words[4:] + positions[4:])  # the level words follow


# --- (d) prompt orientation --------------------------------------------------------------------------

def test_level_prompts_are_listed_simplest_first_as_in_the_paper():
    # Sec. 3.2: "X^Complexity_k, k = 1,2,3,4,5 (i.e., Simple Complexity, Little Complexity, Moderate
    # Complexity, Very Complexity, High Complexity)"; Table 4 for 3 and 7 levels
    assert LEVEL_NAMES[5] == ("simple complexity", "little complexity", "moderate complexity", "very complexity",
                              "high complexity")
    assert LEVEL_NAMES[3] == ("simple complexity", "moderate complexity", "high complexity")
    assert LEVEL_NAMES[7][0] == "very low complexity" and LEVEL_NAMES[7][-1] == "very high complexity"
    assert CMSSAConfig().readout == "first"  # Eq. 6 as printed: e^{s_i1} / sum_k e^{s_ik}


def test_readouts_by_hand():
    probs = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.1], [0.05, 0.05, 0.1, 0.2, 0.6]])
    torch.testing.assert_close(complexity_readout(probs, "first"), probs[:, 0])
    torch.testing.assert_close(complexity_readout(probs, "last"), probs[:, -1])
    torch.testing.assert_close(complexity_readout(probs, "expectation"), probs @ torch.tensor([0, .25, .5, .75, 1]))


@pytest.mark.parametrize("levels", [3, 5, 7])
def test_which_prompt_each_readout_rewards(tmp_path, levels):
    """An image embedded exactly at a level prompt's text embedding is "that level". With "last" and
    "expectation" the image at the most complex prompt scores highest and the one at the simplest
    prompt lowest (a higher score = more complex, in the prompts' own words); "first" (Eq. 6 as
    printed) rewards the prompt named "simple"/"very low" complexity, which training then drives to
    mean complex."""
    model = tiny_clip_cmssa(tmp_path, levels=levels, prompt_init_std=0.0).eval()
    with torch.no_grad():
        model.encoders.model.logit_scale.fill_(math.log(100.0))
        names = LEVEL_NAMES[levels]
        simplest = [i for i, p in enumerate(model.config.level_prompts) if p.startswith(names[0])]
        most = [i for i, p in enumerate(model.config.level_prompts) if p.startswith(names[-1])]
        assert simplest == [0] and most == [levels - 1]
        placeholder = " ".join(["X"] * model.config.n_ctx)
        texts = [f"{placeholder} {n} photo." for n in ("simple complexity", "high complexity")] \
            if levels != 7 else [f"{placeholder} {n} photo." for n in ("very low complexity", "very high complexity")]
        tok = model.encoders.tokenize(texts)
        images = model.encoders.encode_text(tok["input_ids"], tok["attention_mask"], model.prompts.text_prompts())
        level_emb = model.level_embeddings()
        for readout, simple_wins in (("first", True), ("last", False), ("expectation", False)):
            probs = torch.softmax(100.0 * F.normalize(images, dim=-1) @ F.normalize(level_emb, dim=-1).T, -1)
            score = complexity_readout(probs, readout)
            object.__setattr__(model.config, "readout", readout)
            torch.testing.assert_close(model.complexity_scores(images, level_emb), score)
            assert (score[0] > score[1]) == simple_wins, readout


# --- (e) the two logit scales --------------------------------------------------------------------------

def test_complexity_softmax_uses_the_encoders_logit_scale(tmp_path):
    model = tiny_clip_cmssa(tmp_path, prompt_init_std=1.0).eval()
    with torch.no_grad():
        model.encoders.model.logit_scale.fill_(math.log(100.0))  # CLIP's trained value, exp(4.6052)
        assert model.encoders.logit_scale_exp().item() == pytest.approx(100.0)
        size = model.encoders.image_size
        image = model.complexity_image_embeddings(torch.randn(2, 3, size, size))
        level = model.level_embeddings()
        cos = F.normalize(image, dim=-1) @ F.normalize(level, dim=-1).T
        torch.testing.assert_close(model.complexity_scores(image, level), torch.softmax(100.0 * cos, -1)[:, 0])
        assert not torch.allclose(torch.softmax(100.0 * cos, -1)[:, 0], torch.softmax(cos, -1)[:, 0], atol=1e-4)


def test_alignment_softmax_has_scale_one_as_eq8_prints(tmp_path):
    assert CMSSAConfig().align_logit_scale == 1.0
    model = tiny_clip_cmssa(tmp_path).eval()
    with torch.no_grad():
        model.encoders.model.logit_scale.fill_(math.log(100.0))
        size = model.encoders.image_size
        pixels = torch.randn(3, 3, size, size)
        caps = model.caption_embeddings(model.caption_features(CAPTIONS))
        img = model.alignment_image_embeddings(pixels)
        cos = F.normalize(img, dim=-1) @ F.normalize(caps, dim=-1).T
        q = torch.softmax(cos, -1).diagonal()  # Eq. 8: e^{s_ii} / sum_j e^{s_ij}, no temperature
        torch.testing.assert_close(alignment_scores(img, caps, "paper", 1.0), q)
        _, parts = model.training_step(pixels, torch.rand(3), caps)
    assert parts["alignment"] == pytest.approx(float(((q - 1) ** 2).mean()), rel=1e-5)
    assert not np.isclose(parts["alignment"], float(((torch.softmax(100 * cos, -1).diagonal() - 1) ** 2).mean()))
