"""Small helpers shared by the benchmark scripts: where the data is, and writing the tables of
docs/benchmarks.md.

The scripts import this module as ``benchmarks.common``; run them from the repository root as
``python -m benchmarks.NAME`` (with pyica installed, or ``PYTHONPATH=src``).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "benchmarks.md"


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


def doc_link(path: Path, doc: Path = DOC) -> str:
    """``path`` as a Markdown link target relative to the folder of ``doc`` (as given if on another drive)."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(doc).resolve().parent)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def update_doc_section(marker: str, text: str, doc: Path = DOC) -> None:
    """Replace what lies between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in ``doc``
    (docs/benchmarks.md by default)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    content = doc.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{doc}: markers {start} / {end} not found")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    temp = doc.with_suffix(".md.tmp")
    temp.write_text(f"{head}{start}\n{text.strip()}\n{end}{tail}")
    temp.replace(doc)
