"""Training, kept apart from the library that scores (``pyica.models``).

* :mod:`pyica.training.trainers`: ``pyica train CONFIG``: the config schema, the ``Trainer`` protocol,
  ``build_trainer`` (dispatch on the config's ``method``) and ``train_config`` (evaluate the recipe, fit,
  write the safetensors weights and their JSON card), one path for every method.
* :mod:`pyica.training.loop`: the one epoch loop every gradient-descent trainer runs (AMP, accumulation,
  DDP, checkpoints and exact resume, validation and best-epoch selection, progress);
  :mod:`pyica.training.resume`: its checkpoint schema.
* The methods: :mod:`~pyica.training.fit_head` (``ridge``: frozen-feature heads, the default model),
  :mod:`~pyica.training.train_cmssa` (CM-SSA), :mod:`~pyica.training.train_icnet` (ICNet),
  :mod:`~pyica.training.probe` (probes on frozen encoders), :mod:`~pyica.training.pretrain` (CLICv2
  pretraining, ``pyica pretrain``).
* :mod:`pyica.training.distributed`: the ``torchrun`` process group and what runs on it (sharding,
  DistributedDataParallel, global-batch BatchNorm, mixed precision).
"""
