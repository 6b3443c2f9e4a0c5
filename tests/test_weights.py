"""One weights format (pyica.weights): save/load round trips per model family, older card layouts,
and the errors a damaged file or card gives."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from pyica.models.clicv2_probe import CLICv2Probe, build_head, load_probe, random_encoder, save_probe
from pyica.models.effnet_ridge import PRESETS, EffNetRidge, EffNetRidgeConfig, View, load_card, weights_path
from pyica.models.icnet import ICNet, ICNetConfig, ICNetModel, load_icnet, save_icnet
from pyica.models.vit import vit_config
from pyica.weights import SCHEMA, WeightsError, load_weights, save_weights, sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")

ICNET_TINY = dict(input_size=64, width=8, fuse_channels=8, slam_hidden=16, score_hidden=16)


def _card(**extra) -> dict:
    return {"name": "toy", "architecture": {"name": "toy", "arguments": {"n": 3}},
            "score": {"range": [0.0, 1.0], "higher": "more complex"}, **extra}


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# --- the format ------------------------------------------------------------------------------------

def test_save_fills_sha_version_schema_and_load_round_trips(tmp_path):
    tensors = {"w": torch.randn(3, 2), "b": torch.zeros(())}
    card = save_weights(tensors, _card(training={"dataset": "toy"}), tmp_path / "toy.safetensors")
    on_disk = json.loads((tmp_path / "toy.json").read_text())
    assert on_disk == card and card["schema"] == SCHEMA and card["pyica_version"]
    assert card["weights"] == {"file": "toy.safetensors", "sha256": sha256_file(tmp_path / "toy.safetensors"),
                               "format": "safetensors", "tensors": {"w": [3, 2], "b": []}}
    for path in (tmp_path / "toy.safetensors", tmp_path / "toy.json"):  # either file names the pair
        loaded, loaded_card = load_weights(path)
        assert _equal(loaded, tensors) and loaded_card == card


def test_invalid_card_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(WeightsError, match="toy.json: malformed card: architecture"):
        save_weights({"w": torch.ones(1)}, {"name": "toy"}, tmp_path / "toy.safetensors")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap"])
def test_damaged_or_swapped_weights_fail_naming_the_file(tmp_path, damage):
    path = tmp_path / "toy.safetensors"
    save_weights({"w": torch.randn(8)}, _card(), path)
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        save_file({"w": torch.randn(8)}, path)
    with pytest.raises(WeightsError, match=rf"^{path}: sha256 .* does not match the card's") as e:
        load_weights(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("edit, message", [
    (lambda c: {**c, "schema": "pyica.card/9"}, "unknown card schema 'pyica.card/9'"),
    (lambda c: {k: v for k, v in c.items() if k != "name"}, "malformed card: name: Field required"),
    (lambda c: {**c, "weights": {**c["weights"], "sha256": ""}}, "malformed card: weights.sha256"),
    (lambda c: {**c, "score": {"range": [0, 1], "higher": "sideways"}}, "malformed card: score.higher"),
    (lambda c: {k: v for k, v in c.items() if k not in ("schema", "weights")}, "no known older layout"),
    (lambda c: {**c, "weights": {k: v for k, v in c["weights"].items() if k != "sha256"}}, "records no sha256"),
    (lambda c: {"weights": {"sha256": "0" * 64}}, "no known older layout"),
    (lambda c: [c], "must be a JSON object"),
    (lambda c: {**c, "training": {"fit_device": 0}}, "malformed card: training: Value error, fit_device"),
    (lambda c: {**c, "training": {"fit_device": " "}}, "malformed card: training: Value error, fit_device"),
])
def test_card_errors_are_one_line_naming_the_card(tmp_path, edit, message):
    path = tmp_path / "toy.safetensors"
    card = save_weights({"w": torch.ones(2)}, _card(), path)
    (tmp_path / "toy.json").write_text(json.dumps(edit(card)))
    with pytest.raises(WeightsError, match=rf"^{tmp_path / 'toy.json'}: .*{message}") as e:
        load_weights(path)
    assert "\n" not in str(e.value)


def test_card_records_the_fit_device_and_cards_without_one_still_load(tmp_path):
    path = tmp_path / "toy.safetensors"
    card = save_weights({"w": torch.ones(2)}, _card(training={"fit_device": "cuda (NVIDIA H200)"}), path)
    assert load_weights(path)[1]["training"]["fit_device"] == card["training"]["fit_device"] == "cuda (NVIDIA H200)"
    save_weights({"w": torch.ones(2)}, _card(training={"dataset": "toy"}), path)
    assert "fit_device" not in load_weights(path)[1]["training"]


def test_bad_json_and_missing_card(tmp_path):
    path = tmp_path / "toy.safetensors"
    save_weights({"w": torch.ones(2)}, _card(), path)
    (tmp_path / "toy.json").write_text('{"schema": ')
    with pytest.raises(WeightsError, match=rf"^{tmp_path / 'toy.json'}: not valid JSON"):
        load_weights(path)
    (tmp_path / "toy.json").unlink()
    with pytest.raises(FileNotFoundError, match="toy.json: the card of toy.safetensors is missing"):
        load_weights(path)


# --- shipped weights: today's cards still load, byte for byte --------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shipped_cards_read_as_the_current_schema(name):
    raw = json.loads(weights_path(name).with_suffix(".json").read_text())
    card = load_card(name)
    assert card["schema"] == SCHEMA and card["architecture"]["name"] == "effnet_ridge"
    config, _ = PRESETS[name]
    assert [View(**v) for v in card["architecture"]["arguments"]["views"]] == list(config.views)
    # only moved: every field of the file is still there, the sha256 the one it records
    assert card["weights"]["sha256"] == raw["weights"]["sha256"] == sha256_file(weights_path(name))
    for key in ("name", "description", "preprocessing", "training", "evaluation", "trained_on", "not_trained_on"):
        assert card[key] == raw[key]
    assert card["score"]["range"] == raw["score"]["range"] == [0.0, 1.0]
    assert load_weights(weights_path(name))[1] == card


# --- every family round-trips through the one format -----------------------------------------------

def test_effnet_head_round_trip(tmp_path):
    model = EffNetRidge(EffNetRidgeConfig((View("lite0", "square", 64),)), pretrained=False)
    head = {k: torch.randn_like(v) for k, v in model.head_tensors().items()}
    save_weights(head, _card(architecture={"name": "effnet_ridge", "arguments": {"views": []}}),
                 tmp_path / "head.safetensors")
    fresh = EffNetRidge(EffNetRidgeConfig((View("lite0", "square", 64),)), pretrained=False)
    assert _equal(fresh.load_head(tmp_path / "head.safetensors").head_tensors(), head) and fresh.fitted


def test_icnet_round_trip_and_older_card(tmp_path):
    torch.manual_seed(0)
    model = ICNetModel(ICNet(ICNetConfig(**ICNET_TINY))).eval()
    path = tmp_path / "icnet.safetensors"
    card = save_icnet(model, path, {"training": {"dataset": "toy"}})
    assert card["architecture"]["arguments"] == model.config.to_dict() and card["score"]["range"] == [0.0, 1.0]
    assert _equal(load_icnet(path).net.state_dict(), model.net.state_dict())
    # the layout save_icnet wrote before pyica.card/1
    arch = dict(card["architecture"])
    older = {"name": "icnet", "pyica_version": "0.1.0", "format": "pyica.icnet/1", "method": "icnet",
             "architecture": {"name": arch.pop("description"), "config": arch.pop("arguments"),
                              **{k: v for k, v in arch.items() if k != "name"}},
             "preprocessing": card["preprocessing"], "training": {"dataset": "toy"},
             "weights": {"file": path.name, "sha256": card["weights"]["sha256"], "format": "safetensors"}}
    path.with_suffix(".json").write_text(json.dumps(older))
    loaded = load_icnet(path)
    assert _equal(loaded.net.state_dict(), model.net.state_dict())
    assert loaded.card["architecture"]["arguments"] == model.config.to_dict()


def test_clicv2_probe_round_trip_and_older_card(tmp_path):
    encoder, info = random_encoder(vit_config("vit_tiny", patch_size=8, image_size=32, dim=32, depth=2, heads=2),
                                   arch="vit_tiny")
    model = CLICv2Probe(encoder, build_head("linear", encoder.num_features), info).eval()
    path = tmp_path / "probe.safetensors"
    card = save_probe(model, path)
    assert _equal(load_probe(path).state_dict(), model.state_dict())
    arch = card["architecture"]
    older = {"name": card["name"], "format": "pyica.clicv2_probe/1", "method": "clicv2_probe",
             "encoder": {"config": arch["arguments"]["encoder"], **arch["encoder"]}, "head": arch["arguments"]["head"],
             "preprocessing": card["preprocessing"], "weights": {"file": path.name, "sha256": card["weights"]["sha256"]}}
    path.with_suffix(".json").write_text(json.dumps(older))
    loaded = load_probe(path)
    assert _equal(loaded.state_dict(), model.state_dict()) and loaded.encoder_info["arch"] == "vit_tiny"


def test_cmssa_round_trip_and_older_card(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from pyica.models import cmssa
    from pyica.models.cmssa_offline import EffNetMiniLMEncoders, minilm_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())

    def tiny_encoders(spec, **_):
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=80)
        bert = transformers.BertModel(config, add_pooling_layer=False).eval()
        return EffNetMiniLMEncoders(bert, tokenizer, image_variant="lite0", embed_dim=spec["embed_dim"],
                                    pretrained=False)

    spec = {"kind": "offline", "image_variant": "lite0", "embed_dim": 8}
    monkeypatch.setattr(cmssa, "build_encoders", tiny_encoders)
    torch.manual_seed(1)
    model = cmssa.CMSSA(tiny_encoders(spec), cmssa.CMSSAConfig(n_ctx=2, depth=1, max_patches=1))
    path = tmp_path / "cmssa.safetensors"
    card = cmssa.save_cmssa(model, path, {"name": "cmssa_offline.lite2_minilm", "encoders": spec,
                                          "score": {"meaning": "toy"}})
    # one source for the score range: the model's, in the card and in the registry
    assert card["score"] == {"range": list(model.score_range), "higher": "more complex", "meaning": "toy"}
    from pyica.registry import get_entry

    assert get_entry("cmssa_offline.lite2_minilm").score_range == cmssa.CMSSA.score_range == (0.0, 1.0)
    assert _equal(cmssa.load_cmssa(path).trainable_state_dict(), model.trainable_state_dict())
    older = {"name": card["name"], "pyica_version": "0.1.0", "encoders": spec, "method": "cmssa",
             "config": card["architecture"]["arguments"]["config"], "score": card["score"],
             "weights": {"file": path.name, "sha256": card["weights"]["sha256"], "holds": "trainable tensors only"}}
    path.with_suffix(".json").write_text(json.dumps(older))
    loaded = cmssa.load_cmssa(path)
    assert _equal(loaded.trainable_state_dict(), model.trainable_state_dict())
    assert loaded.card["architecture"]["arguments"]["encoders"] == spec
