"""Scripts that measure pyica and record the numbers (benchmarks/results/, docs/benchmarks.md).

A package, so the scripts share code by importing it (``benchmarks.common``, ``benchmarks.speed``, ...).
Run one from the repository root as a module, with pyica installed (or ``PYTHONPATH=src``)::

    python -m benchmarks.compare_models --help
"""
