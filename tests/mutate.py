"""Mutation check: every paper detail the tests pin must make them fail when it is changed (issue 22).

Each line of ``tests/mutations.txt`` names one mutation::

    MUTATION | src/pyica/models/x.py | exact original text | replacement | tests/test_a.py::test_b ...

(the original text must occur exactly once in the file; ``\\n`` in either text stands for a newline).
For each mutation, the package sources are copied to a temporary folder, the one change is made there,
and the named tests run against the copy (``PYTHONPATH``); the mutation is *caught* when they fail.
The tests are first run against the unchanged copy, which must pass. The working tree is never touched.

    python tests/mutate.py                 # all mutations; exit 1 if one survives or cannot be applied
    python tests/mutate.py -k momentum     # only those whose text or tests contain "momentum"
    make mutate
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTATIONS = Path(__file__).resolve().with_name("mutations.txt")


@dataclass(frozen=True)
class Mutation:
    line: int
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.file}:{self.original[:50]!r} -> {self.replacement[:50]!r}"


def read_mutations(path: Path = MUTATIONS) -> list[Mutation]:
    """The mutations listed in ``path`` (blank lines and ``#`` comments skipped); a malformed line is an error."""
    out = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in raw.split(" | ")]
        if len(parts) != 5 or parts[0] != "MUTATION":
            raise SystemExit(f"{path}:{number}: expected 'MUTATION | file | original | replacement | tests'")
        _, file, original, replacement, tests = parts
        unescape = lambda text: text.replace("\\n", "\n")  # noqa: E731
        out.append(Mutation(number, file, unescape(original), unescape(replacement), tuple(tests.split())))
    return out


def run_tests(src: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    """Whether ``tests`` pass with the package imported from ``src``; the tail of their output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(REPO / "tests"), str(REPO)])}
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timed out (counted as caught)"
    return done.returncode == 0, (done.stdout + done.stderr)[-600:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", dest="keyword", help="only mutations whose file, text or tests contain this")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per test run (default: 300)")
    args = parser.parse_args(argv)

    mutations = [m for m in read_mutations()
                 if not args.keyword or args.keyword in " ".join([m.file, m.original, m.replacement, *m.tests])]
    survived, broken = [], []
    baseline: dict[tuple[str, ...], tuple[bool, str]] = {}
    with tempfile.TemporaryDirectory(prefix="pyica-mutate-") as tmp:
        for m in mutations:
            t0 = time.perf_counter()
            src = Path(tmp) / f"m{m.line}"
            shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            target = src / Path(m.file).relative_to("src")
            text = target.read_text(encoding="utf-8")
            if text.count(m.original) != 1:
                broken.append(m)
                print(f"line {m.line}: CANNOT APPLY ({text.count(m.original)} matches) {m.label}")
                continue
            if m.tests not in baseline:  # unchanged sources: the tests must pass (once per set of tests)
                baseline[m.tests] = run_tests(src, m.tests, args.timeout)
            passed, tail = baseline[m.tests]
            if not passed:
                broken.append(m)
                print(f"line {m.line}: TESTS FAIL WITHOUT THE MUTATION {m.tests}\n{tail}")
                continue
            target.write_text(text.replace(m.original, m.replacement), encoding="utf-8")
            passed, tail = run_tests(src, m.tests, args.timeout)
            verdict = "SURVIVED" if passed else "caught"
            if passed:
                survived.append(m)
            print(f"line {m.line}: {verdict} in {time.perf_counter() - t0:.0f} s  {m.label}")
            shutil.rmtree(src)
    print(f"{len(mutations)} mutations: {len(mutations) - len(survived) - len(broken)} caught, "
          f"{len(survived)} survived, {len(broken)} could not be checked")
    return 1 if survived or broken else 0


if __name__ == "__main__":
    sys.exit(main())
