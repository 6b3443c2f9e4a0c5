"""The package's shape: no import cycles, no module reaching into another's private names, inputs
below scoring, and torchrun's variables read in one place (runtime.torchrun_env)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from pyica.cli import main
from pyica.runtime import TorchrunEnv, torchrun_env

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pyica"
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every pyica import in ``name``, lazy ones included."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "pyica" or target.startswith("pyica."):
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    if submodule in MODULES:
                        found.append((submodule, None, node.lineno))
                    else:
                        found.append((target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("pyica.")]
    return found


GRAPH = {name: {m for m, _, _ in _imports(name) if m in MODULES and m != name} for name in MODULES}


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in GRAPH[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_no_module_imports_another_modules_private_names():
    offences = [f"{MODULES[name].relative_to(PACKAGE.parent)}:{line}: {imported} from {module}"
                for name in MODULES for module, imported, line in _imports(name)
                if imported and imported.startswith("_") and not imported.startswith("__")]
    assert not offences, "private names imported across modules:\n" + "\n".join(offences)


def test_import_graph_has_no_cycles():
    cycles = sorted(name for name in MODULES if name in _reachable(name))
    assert not cycles, f"modules on an import cycle (lazy imports count too): {', '.join(cycles)}"


def test_inputs_sit_below_scoring_training_and_models():
    below = _reachable("pyica.inputs") | _reachable("pyica.data.streams")
    assert not {m for m in below if m in ("pyica.scoring", "pyica.cli", "pyica.registry")
                or m.startswith(("pyica.training", "pyica.models"))}
    assert "pyica.inputs" in GRAPH["pyica.scoring"] and "pyica.inputs" in GRAPH["pyica.data.streams"]


def test_torchrun_variables_are_read_only_in_runtime():
    readers = sorted(name for name, path in MODULES.items()
                     if any(f'"{v}"' in path.read_text(encoding="utf-8") for v in TORCHRUN_VARIABLES))
    assert readers == ["pyica.runtime"]


def test_every_module_imports():
    for name in MODULES:
        if not name.endswith("__main__"):
            importlib.import_module(name)


# --- torchrun_env ----------------------------------------------------------------------------------------


@pytest.fixture
def torchrun(monkeypatch):
    for variable in TORCHRUN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)

    def set_env(**values):
        for key, value in values.items():
            monkeypatch.setenv(key, value)

    return set_env


def test_torchrun_env_outside_torchrun(torchrun):
    assert torchrun_env() == (0, 1, 0, 1)
    torchrun(WORLD_SIZE="1", RANK="3")  # a single process is rank 0 whatever RANK says
    assert torchrun_env() == TorchrunEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)


def test_torchrun_env_under_torchrun(torchrun):
    torchrun(WORLD_SIZE="4", RANK="3", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
    rank, world, local_rank, local_world = torchrun_env()
    assert (rank, world, local_rank, local_world) == (3, 4, 1, 2)


def test_torchrun_env_local_values_default_to_one_machine(torchrun):
    torchrun(WORLD_SIZE="2", RANK="1")
    assert torchrun_env() == (1, 2, 1, 2)


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2", "RANK": "abc"}, "RANK='abc' is not an integer"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "x"}, "LOCAL_RANK='x' is not an integer"),
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not in 0..1"),
])
def test_bad_torchrun_variables_are_one_line_naming_the_variable(torchrun, tmp_path, capsys, env, message):
    torchrun(**env)
    with pytest.raises(ValueError, match=message):
        torchrun_env()
    assert main(["score", str(tmp_path), "-m", "entropy", "-q", "-o", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
