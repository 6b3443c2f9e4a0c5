"""The mutation list stays applicable: every entry names an existing test and text found once (tests/mutate.py)."""

from pathlib import Path

from mutate import REPO, read_mutations


def test_every_mutation_applies_once_and_names_existing_tests():
    mutations = read_mutations()
    assert mutations
    for m in mutations:
        text = (REPO / m.file).read_text(encoding="utf-8")
        assert text.count(m.original) == 1, f"tests/mutations.txt line {m.line}: {m.original!r} in {m.file}"
        assert m.original != m.replacement
        for node in m.tests:
            path, _, name = node.partition("::")
            assert (REPO / path).is_file(), f"line {m.line}: {path} missing"
            assert not name or f"def {name.split('[')[0]}(" in Path(REPO / path).read_text(encoding="utf-8"), \
                f"line {m.line}: {node} not found"
