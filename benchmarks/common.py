"""Small helpers shared by the benchmark scripts: where the data is, and writing README tables."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"


def default_savoias_root() -> Path:
    """``$PYICA_SAVOIAS`` if set, else the shared copy next to the repository."""
    return Path(os.environ.get("PYICA_SAVOIAS", REPO.parent / "shared" / "data" / "savoias"))


def machine_description() -> str:
    """One line naming the hardware the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} logical cores, {gpu}, torch {torch.__version__}"


def update_readme_section(marker: str, text: str, readme: Path = README) -> None:
    """Replace what lies between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in the README."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    content = readme.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{readme}: markers {start} / {end} not found")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    temp = readme.with_suffix(".md.tmp")
    temp.write_text(f"{head}{start}\n{text.strip()}\n{end}{tail}")
    temp.replace(readme)
