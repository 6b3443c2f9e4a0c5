"""Bridges to other systems; each imports its third-party library only when used.

* :mod:`pyica.integrations.ray`: scoring on Ray Data (``ComplexityScorer`` for ``Dataset.map_batches``,
  and ``pyica score --engine ray``). Needs ``pip install 'pyica[ray]'``.
"""
