"""pyica.create_metric() as a torch.nn.Module: input kinds, uint8 handling, module protocol, as_loss (issue 23)."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pyica
from pyica.metric import ComplexityMetric

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def default():
    return pyica.create_metric(device="cpu")


@pytest.fixture(scope="module")
def entropy():
    return pyica.create_metric("entropy", device="cpu")


def rgb_image(seed=0, shape=(40, 56, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- input kinds and what comes back --------------------------------------------------------------


def test_each_input_kind_gives_a_float_or_a_tensor_of_n_scores(entropy, tmp_path):
    rgb, other = rgb_image(0), rgb_image(1)
    paths = []
    for i, a in enumerate((rgb, other)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(a).save(paths[-1])
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    one = entropy(paths[0])
    singles = [paths[0], Path(paths[0]), Image.fromarray(rgb), rgb, rgb / 255.0, chw, chw.float() / 255]
    for item in singles:
        score = entropy(item)
        assert isinstance(score, float) and score == pytest.approx(one, abs=1e-6), type(item)
    expected = torch.tensor([one, entropy(paths[1])])
    batches = [paths, [Image.fromarray(rgb), Image.fromarray(other)], np.stack([rgb, other]),
               torch.stack([chw, torch.from_numpy(other).permute(2, 0, 1)]), [chw, other]]
    for batch in batches:
        scores = entropy(batch)
        assert isinstance(scores, torch.Tensor) and scores.shape == (2,) and scores.dtype == torch.float32
        assert torch.allclose(scores, expected, atol=1e-6)
    # a batch of one stays a batch; an empty list gives no scores
    assert entropy(chw[None]).shape == (1,) and entropy([paths[0]]).shape == (1,)
    assert entropy([]).shape == (0,)


def test_uint8_tensors_are_read_as_0_to_255_and_other_integers_refused(entropy):
    rgb = rgb_image(2)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    assert entropy(chw) == entropy(rgb) == entropy(chw.float() / 255)
    assert torch.equal(entropy(torch.stack([chw, chw])), entropy(np.stack([rgb, rgb])))
    with pytest.raises(TypeError, match="uint8"):
        entropy(chw.long())
    with pytest.raises(TypeError, match="uint8"):
        entropy(rgb.astype(np.int64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # float tensors of 0..255 values: a clear hint
        entropy(chw.float())


def test_default_model_scores_a_list_of_paths_as_a_batch(default):
    paths = [str(p) for p in EXAMPLES[:3]]
    scores = default(paths)
    assert scores.shape == (3,)
    assert [default(p) for p in paths] == pytest.approx(scores.tolist(), abs=1e-6)


# --- the torch.nn.Module protocol ---------------------------------------------------------------


def test_the_metric_is_a_module_that_moves_saves_and_stays_in_eval(default, entropy):
    assert isinstance(default, torch.nn.Module) and isinstance(default, ComplexityMetric)
    assert default.to("cpu") is default and default.device == torch.device("cpu")
    state = default.state_dict()
    assert "model.weight" in state and any(k.startswith("model.backbones.") for k in state)
    clone = copy.deepcopy(default)
    clone.model.weight.zero_()
    clone.load_state_dict(state)
    assert torch.equal(clone.model.weight, default.model.weight)
    clone.train()
    assert clone.training and not clone.model.training  # the scorer itself never leaves eval mode
    assert clone.eval() is clone and not clone.training
    assert entropy.state_dict() == {} and entropy.to(torch.device("cpu")) is entropy
    assert "lower_better=False" in repr(default)


# --- as_loss ------------------------------------------------------------------------------------


def test_classic_measures_refuse_to_be_a_loss(entropy):
    with pytest.raises(ValueError, match="classic measure.*no gradient"):
        pyica.create_metric("entropy", device="cpu", as_loss=True)
    with pytest.raises(ValueError, match="classic measure"):
        entropy.as_loss()


def test_loss_reductions_weight_and_refused_inputs(default):
    x = torch.rand(3, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    scores = default.as_loss(loss_reduction="none")(x)
    assert scores.shape == (3,)
    assert default.as_loss()(x).item() == pytest.approx(scores.mean().item(), abs=1e-6)
    assert default.as_loss(loss_reduction="sum")(x).item() == pytest.approx(scores.sum().item(), abs=1e-6)
    assert default.as_loss(loss_weight=-2.0)(x).item() == pytest.approx(-2 * scores.mean().item(), abs=1e-6)
    assert default.as_loss(loss_reduction="none")(x[0]).shape == (1,)  # 3xHxW is a batch of one
    loss = default.as_loss()
    assert loss.is_loss and loss.model is default.model and not default.is_loss
    with pytest.raises(TypeError, match="float image tensors"):
        loss((x * 255).to(torch.uint8))
    with pytest.raises(TypeError, match="float image tensors"):
        loss(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="loss_reduction"):
        default.as_loss(loss_reduction="max")


def test_differentiable_scores_are_close_to_the_regular_ones(default):
    """PIL's bilinear filter on uint8 pixels vs interpolate(antialias=True) on floats: measured max
    difference on the example images 0.0017 (scores in (0, 1))."""
    regular = default([str(p) for p in EXAMPLES])
    images = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).float() / 255 for p in EXAMPLES]
    loss = default.as_loss(loss_reduction="none")
    with torch.no_grad():
        differentiable = torch.cat([loss(x) for x in images])
    assert (differentiable - regular).abs().max().item() < 0.005


def test_gradients_reach_the_input_and_match_finite_differences(default):
    x = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    default.as_loss()(x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    # a directional derivative of the default model in float64 against central differences
    model = copy.deepcopy(default.model).double()
    x64 = x.detach().double().requires_grad_(True)
    direction = torch.randn(x64.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model.score_tensor(x64).sum().backward()
    analytic = (x64.grad * direction).sum().item()
    h = 1e-8  # small enough that few ReLU6 kinks are crossed
    with torch.no_grad():
        step = model.score_tensor(x64 + h * direction) - model.score_tensor(x64 - h * direction)
        numeric = (step.sum() / (2 * h)).item()
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8)


def test_gradcheck_of_a_small_effnet_ridge_in_float64():
    from pyica.models.effnet_ridge import EffNetRidge, EffNetRidgeConfig, View

    model = EffNetRidge(EffNetRidgeConfig((View("lite0", "square", 32), View("lite0", "longest", 40)),
                                          pooled_maps=3)).double().eval()
    g = torch.Generator().manual_seed(0)
    model.weight.copy_(torch.randn(model.feature_dim, generator=g, dtype=torch.float64) * 1e-2)
    model.bias.fill_(0.5)
    x = torch.rand(1, 3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model.score_tensor, (x,), eps=1e-6, atol=1e-5, rtol=1e-3)
