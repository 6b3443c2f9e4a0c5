"""Training recipes, kept apart from the library that scores (``pyica.models``).

* :mod:`pyica.training.fit_head`: ``pyica train CONFIG`` for frozen-feature models (the default
  model): evaluate the recipe under the benchmark protocol, fit on the whole dataset, write the
  safetensors weights and their JSON card.
* :mod:`pyica.training.train_cmssa`, :mod:`pyica.training.probe`, :mod:`pyica.training.pretrain`:
  CM-SSA, probes on frozen encoders, CLICv2 pretraining.
* :mod:`pyica.training.distributed`: what every trainer shares to run under ``torchrun`` (process
  group, DistributedDataParallel, global-batch BatchNorm, mixed precision);
  :mod:`pyica.training.resume`: per-epoch checkpoints and exact resume.
"""
