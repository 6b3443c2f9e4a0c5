"""CM-SSA: losses against hand computation, prompt wiring, frozen-mode gradients, overfitting a toy set.

Everything runs on tiny randomly initialised encoders built in code (no CLIP weights exist here):
the offline pair with a random EfficientNet-Lite0 and a 2-layer BERT on MiniLM's real tokenizer,
and a tiny CLIP from tests/test_clip_maple.py's helpers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from pyica.data.dataset import ComplexityDataset  # noqa: E402
from pyica.metrics import srcc  # noqa: E402
from pyica.models.cmssa import (CMSSA, LEVEL_NAMES, CMSSAConfig, PatchGrid, alignment_scores,  # noqa: E402
                                cmssa_loss, complexity_probabilities, complexity_readout, patch_boxes)
from pyica.training.train_cmssa import CMSSATrainer, RandomCrop, TrainRecipe  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    from pyica.models.cmssa_offline import minilm_path

    return transformers.AutoTokenizer.from_pretrained(minilm_path())


def tiny_offline(tokenizer, embed_dim: int = 16):
    from pyica.models.cmssa_offline import EffNetMiniLMEncoders

    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=80)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    return EffNetMiniLMEncoders(bert, tokenizer, image_variant="lite0", embed_dim=embed_dim, pretrained=False)


# --- the pieces of the loss, by hand -------------------------------------------------------------

def test_level_names_follow_the_paper():
    assert LEVEL_NAMES[3] == ("simple complexity", "moderate complexity", "high complexity")
    assert len(LEVEL_NAMES[5]) == 5 and LEVEL_NAMES[5][1] == "little complexity"  # not the code's "littel"
    assert LEVEL_NAMES[7][0] == "very low complexity" and LEVEL_NAMES[7][-1] == "very high complexity"
    assert CMSSAConfig(levels=3).level_prompts == ["simple complexity photo.", "moderate complexity photo.",
                                                   "high complexity photo."]
    with pytest.raises(ValueError, match="levels"):
        CMSSAConfig(levels=4)


def test_complexity_readouts_match_hand_computation():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    levels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    probs = complexity_probabilities(img, levels, torch.tensor(10.0))
    cos = np.array([[1, 1 / math.sqrt(2), 0], [0, 1 / math.sqrt(2), 1]])
    expected = np.exp(10 * cos) / np.exp(10 * cos).sum(1, keepdims=True)
    np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(complexity_readout(probs, "first").numpy(), expected[:, 0], rtol=1e-5)
    np.testing.assert_allclose(complexity_readout(probs, "expectation").numpy(), expected @ [0, 0.5, 1], rtol=1e-5)


def test_alignment_scores_paper_and_reference():
    img = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    cap = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    cos = (img / img.norm(dim=1, keepdim=True)) @ (cap / cap.norm(dim=1, keepdim=True)).T
    np.testing.assert_allclose(alignment_scores(img, cap, "reference").numpy(), cos.diagonal().numpy(), rtol=1e-6)
    soft = np.exp(cos.numpy()) / np.exp(cos.numpy()).sum(1, keepdims=True)
    np.testing.assert_allclose(alignment_scores(img, cap, "paper").numpy(), soft.diagonal(), rtol=1e-6)


def test_loss_is_alpha_alignment_plus_beta_complexity():
    score, target, align = torch.tensor([0.2, 0.6]), torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.25])
    lc = ((0.2 - 0) ** 2 + (0.6 - 1) ** 2) / 2
    la = ((0.5 - 1) ** 2 + (0.25 - 1) ** 2) / 2
    total, parts = cmssa_loss(score, target, align, CMSSAConfig(alpha=0.1, beta=0.9))
    assert total.item() == pytest.approx(0.1 * la + 0.9 * lc)
    assert parts == pytest.approx({"complexity": lc, "alignment": la})
    total, parts = cmssa_loss(score, target, align, CMSSAConfig(branches="complexity", beta=0.9))
    assert total.item() == pytest.approx(0.9 * lc) and "alignment" not in parts
    la_ref = ((0.5 - 0.2) ** 2 + (0.25 - 0.2) ** 2) / 2  # the reference code's labels give a 0.2 target
    total, _ = cmssa_loss(score, target, align, CMSSAConfig(alpha=1.0, beta=1.0, align_target=0.2))
    assert total.item() == pytest.approx(la_ref + lc)
    total, _ = cmssa_loss(None, target, align, CMSSAConfig(branches="alignment"))  # Eq. 5: alignment is the score
    assert total.item() == pytest.approx(((0.5 - 0) ** 2 + (0.25 - 1) ** 2) / 2)


def test_patch_grid_covers_the_image_and_caps_patches():
    boxes = patch_boxes(600, 384, 224, 112, None)
    xs, ys = sorted({x for x, _ in boxes}), sorted({y for _, y in boxes})
    assert xs[0] == 0 and xs[-1] == 600 - 224 and ys == [0, 80, 160]  # spacing at most the stride
    assert max(b - a for a, b in zip(xs, xs[1:])) <= 112
    assert len(patch_boxes(2000, 2000, 224, 64, 9)) == 9
    assert patch_boxes(100, 100, 224, 112, 9) == [(0, 0)]
    patches = PatchGrid(short_side=256, size=224, stride=112, max_patches=4)(Image.new("RGB", (512, 300)))
    assert patches.shape[1:] == (3, 224, 224) and patches.dtype == torch.uint8 and len(patches) <= 4


def test_random_crop_is_reproducible():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    crop = RandomCrop(short_side=256, size=224, seed=3)
    assert torch.equal(crop(image, 5, 1), crop(image, 5, 1))
    assert not torch.equal(crop(image, 5, 1), crop(image, 5, 2))


# --- the offline pair ----------------------------------------------------------------------------

def test_minilm_forward_without_prompts_equals_transformers(tokenizer):
    enc = tiny_offline(tokenizer)
    tokens = enc.tokenize(["a cat on a mat", "a busy street market full of people"])
    ours = enc.pooled_text(tokens["input_ids"], tokens["attention_mask"])
    hidden = enc.text_model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(ours, (hidden * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=1e-5)


def test_text_prompts_replace_the_placeholders(tokenizer):
    enc = tiny_offline(tokenizer)
    prompts = [torch.randn(4, enc.text_width) for _ in range(2)]
    a, b = enc.tokenize(["x x x x simple photo."]), enc.tokenize(["y y y y simple photo."])
    assert a["input_ids"].shape == b["input_ids"].shape
    with torch.no_grad():
        plain = [enc.encode_text(t["input_ids"], t["attention_mask"]) for t in (a, b)]
        prompted = [enc.encode_text(t["input_ids"], t["attention_mask"], prompts) for t in (a, b)]
    assert not torch.allclose(plain[0], plain[1])
    torch.testing.assert_close(prompted[0], prompted[1])


def test_frozen_mode_trains_only_prompts_and_heads(tokenizer):
    model = CMSSA(tiny_offline(tokenizer), CMSSAConfig(n_ctx=4, train_backbone=False))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("prompts.", "encoders.image_", "encoders.text_proj", "encoders.logit"))
                             for n in trainable)
    model.train()
    pixels = model.normalize(torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8))
    caps = model.caption_embeddings(model.caption_features(["one", "two things", "three"]))
    loss, parts = model.training_step(pixels, torch.rand(3), caps)
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable and set(parts) == {"complexity", "alignment"}
    state = model.trainable_state_dict()
    assert not any(k.startswith(("encoders.trunk.", "encoders.text_model.")) for k in state)
    assert "encoders.image_norm.running_mean" in state
    tuned = CMSSA(tiny_offline(tokenizer), CMSSAConfig(n_ctx=4, train_backbone=True))
    assert any(k.startswith("encoders.trunk.") for k in tuned.trainable_state_dict())


def _toy_dataset(tmp_path, n=16) -> ComplexityDataset:
    """Images whose complexity is the number of random rectangles drawn on them."""
    rng = np.random.default_rng(0)
    paths, scores = [], []
    for i in range(n):
        count = int(rng.integers(0, 40))
        img = np.full((96, 96, 3), 200, np.uint8)  # square: a 64-px crop of it is the whole image
        for _ in range(count):
            x, y = rng.integers(0, 90), rng.integers(0, 90)
            img[y:y + rng.integers(2, 20), x:x + rng.integers(2, 20)] = rng.integers(0, 255, 3)
        path = tmp_path / f"img{i:02d}.png"
        Image.fromarray(img).save(path)
        paths.append(path.name)
        scores.append(count / 40 * 100)
    return ComplexityDataset(name="toy", root=tmp_path, paths=paths, scores=scores, categories=[], groups=[],
                             score_scale=(0.0, 100.0))


def test_tiny_offline_cmssa_overfits_sixteen_images(tokenizer, tmp_path):
    ds = _toy_dataset(tmp_path)
    captions = {p: f"an image with {n} things" for p, n in zip(ds.full_paths(), range(len(ds)))}
    # one 64-px patch per image at test time, crops of the same scale in training
    config = CMSSAConfig(n_ctx=4, depth=2, patch_size=64, patch_stride=64, max_patches=1, eval_short_side=64,
                         readout="expectation")
    recipe = TrainRecipe(epochs=40, batch_size=8, lr=1e-2, train_short_side=64, train_crops=1, num_workers=0,
                         patience=None)

    def build():
        return CMSSA(tiny_offline(tokenizer), config)

    trainer = CMSSATrainer(build, recipe, captions=captions)
    info = trainer.fit_dataset(ds)
    first, last = trainer.history[0], trainer.history[-1]
    assert last["complexity"] < 0.25 * first["complexity"]
    scores, errors = trainer.score_files(ds.full_paths())
    assert not errors and srcc(scores, ds.scores) > 0.9
    assert info["epochs_run"] == 40 and info["selected_on"] == "last epoch"
    # the trainer's cached-feature scores equal the model's own forward from files
    direct = trainer.model.score_images([Image.open(p).convert("RGB") for p in ds.full_paths()[:3]])
    np.testing.assert_allclose(scores[:3], direct.numpy(), atol=1e-5)


def test_validation_selects_the_epoch(tokenizer, tmp_path):
    ds = _toy_dataset(tmp_path, n=12)
    config = CMSSAConfig(n_ctx=2, depth=1, patch_size=64, patch_stride=64, max_patches=2, eval_short_side=96,
                         branches="complexity")
    recipe = TrainRecipe(epochs=4, batch_size=4, lr=1e-3, train_short_side=96, train_crops=1, num_workers=0, patience=2)
    trainer = CMSSATrainer(lambda: CMSSA(tiny_offline(tokenizer), config), recipe)
    info = trainer.fit_dataset(ds.subset(np.arange(8)), ds.subset(np.arange(8, 12)))
    assert info["selected_on"] == "validation" and 1 <= info["best_epoch"] <= info["epochs_run"]
    assert all("val_srcc" in row for row in trainer.history)


def test_alignment_branch_needs_captions(tokenizer, tmp_path):
    ds = _toy_dataset(tmp_path, n=4)
    trainer = CMSSATrainer(lambda: CMSSA(tiny_offline(tokenizer), CMSSAConfig(n_ctx=2, depth=1)), TrainRecipe(epochs=1))
    with pytest.raises(ValueError, match="captions"):
        trainer.fit_dataset(ds)


# --- on a tiny CLIP ---------------------------------------------------------------------------------

def test_cmssa_on_tiny_clip_couples_alignment_into_the_score(tmp_path):
    from test_clip_maple import make_tiny_clip

    encoders = make_tiny_clip(tmp_path)
    model = CMSSA(encoders, CMSSAConfig(n_ctx=2, depth=2, patch_size=encoders.image_size))
    assert model.prompts.depth == 2 and len(model.prompts.alignment_vision) == 2
    model.train()
    size = encoders.image_size
    pixels = torch.randn(2, 3, size, size)
    caps = model.caption_embeddings(model.caption_features(["a red car", "two dogs"]))
    loss, _ = model.training_step(pixels, torch.tensor([0.1, 0.9]), caps)
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("prompts.") for n in trainable)  # frozen CLIP: prompts and couplings only
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
    # the complexity score depends on the alignment branch's vision prompts (MaPLe coupling)
    model.eval()
    with torch.no_grad():
        before = model.complexity_scores(model.complexity_image_embeddings(pixels), model.level_embeddings())
        model.prompts.alignment_vision[1].add_(1.0)
        after = model.complexity_scores(model.complexity_image_embeddings(pixels), model.level_embeddings())
    assert not torch.allclose(before, after)


def test_trainer_is_evaluated_by_the_common_protocol(tokenizer, tmp_path):
    from pyica.evaluation import run_protocol

    ds = _toy_dataset(tmp_path, n=12)
    config = CMSSAConfig(n_ctx=2, depth=1, patch_size=64, patch_stride=64, max_patches=1, eval_short_side=64)
    recipe = TrainRecipe(epochs=2, batch_size=4, train_short_side=64, train_crops=1, num_workers=0,
                         cache_dir=str(tmp_path / "cache"))
    captions = {p: "a picture" for p in ds.full_paths()}
    trainer = CMSSATrainer(lambda: CMSSA(tiny_offline(tokenizer), config), recipe, captions)
    result = run_protocol("cmssa_offline.lite2_minilm", ds, model=trainer, protocol="random", n_splits=2,
                          test_fraction=0.25, val_fraction=0.4, num_workers=0)
    pooled = [r for r in result.rows if r["category"] == "pooled"]
    assert len(pooled) == 2 and all(np.isfinite(r["srcc"]) for r in pooled)
    assert list((tmp_path / "cache").glob("cmssa_*.npz"))  # trunk features kept for the next run


# --- weights, cards, `pyica train` and `pyica score --weights` on the real offline encoders ----------

@pytest.mark.slow
def test_train_config_writes_weights_that_score_through_the_registry(tmp_path):
    import json

    from pyica.cli import main
    from pyica.data.manifest import write_manifest
    from pyica.models.cmssa import load_cmssa
    from pyica.registry import create_model

    ds = _toy_dataset(tmp_path, n=8)
    manifest = write_manifest(ds, tmp_path / "toy.csv")
    config = {"method": "cmssa", "model": "cmssa_offline.lite2_minilm", "dataset": manifest.name,
              "encoders": {"kind": "offline", "image_variant": "lite2", "embed_dim": 32},
              "cmssa": {"n_ctx": 2, "depth": 2, "max_patches": 1, "eval_short_side": 224},
              "recipe": {"epochs": 2, "batch_size": 4, "train_crops": 1, "train_short_side": 224, "num_workers": 0},
              "captions": {"captioner": "imagenet-labels", "top_k": 2},
              "evaluation": None, "output_dir": "out"}
    (tmp_path / "cmssa.json").write_text(json.dumps(config))
    assert main(["train", str(tmp_path / "cmssa.json"), "--workers", "0", "-q"]) == 0
    weights = tmp_path / "out" / "cmssa_offline.lite2_minilm.safetensors"
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["weights"]["holds"] == "trainable tensors only" and card["training"]["images"] >= 6
    assert (tmp_path / "out" / "captions_toy_imagenet-labels.jsonl").is_file()

    model = create_model("cmssa_offline.lite2_minilm", weights=str(weights))
    image = Image.open(ds.full_paths()[0]).convert("RGB")
    again = load_cmssa(weights)
    torch.testing.assert_close(model.score_images([image]), again.score_images([image]))
    out = tmp_path / "scores.csv"
    assert main(["score", str(tmp_path), "-o", str(out), "-m", "cmssa_offline.lite2_minilm", "--weights",
                 str(weights), "--workers", "0", "-q"]) == 0
    assert len(out.read_text().strip().splitlines()) == 1 + 8

    # a damaged file is refused; no weights at all is a clear error
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_cmssa(weights)
    with pytest.raises(ValueError, match="--weights"):
        create_model("cmssa_offline.lite2_minilm")
