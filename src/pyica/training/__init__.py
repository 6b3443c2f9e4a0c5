"""Training recipes, kept apart from the library that scores (``pyica.models``).

* :mod:`pyica.training.fit_head`: ``pyica train CONFIG`` for frozen-feature models (the default
  model): evaluate the recipe under the benchmark protocol, fit on the whole dataset, write the
  safetensors weights and their JSON card.
"""
