"""The closed sets of names a user chooses from, in a module that imports nothing.

The command line lists them in ``--help``; keeping them here (rather than in the modules
that act on them, which import numpy, torch or ffcv) lets ``fasttarget --help`` and the
option parser start without those libraries. The modules that act on a name import its
set from here, so each set is written once.

Example:
    >>> "cifar10" in DATASETS, DTYPES
    (True, ('float16', 'float32'))
"""

DATASETS = ("cifar10", "cifar100", "tinyimagenet", "imagefolder", "imagenet")
"""Source datasets ``fasttarget convert`` reads (:mod:`fasttarget.sources`)."""

DTYPES = ("float16", "float32")
"""Logit storage types of a Strategy C cache (:mod:`fasttarget.cache`)."""

SUITES = ("convert", "loader", "augment", "targets", "step", "fleet", "imagenet")
"""Benchmark suites of ``fasttarget bench`` (:mod:`fasttarget.bench`)."""

SWEEP_BACKENDS = ("local", "ray", "slurm")
"""Where ``fasttarget sweep`` runs its units (:mod:`fasttarget.sweep.executors`)."""

FORMS = ("full", "top-k")
"""What a Strategy C cache stores per sample: all logits or the top k (:mod:`fasttarget.cache`)."""

STRATEGIES = ("A", "B", "C")
"""The paper's target strategies: A one-hot, B online teacher, C cached teacher (:mod:`fasttarget.targets`)."""

LOSSES = ("separation", "coupled")
"""Student losses: the paper's separation loss or plain KD (:mod:`fasttarget.losses`)."""

ARCHS = ("resnet18", "resnet50", "vit_s")
"""Built-in architectures (:mod:`fasttarget.models`); ecosystem ones are named ``SOURCE:NAME``."""

LOADER_BACKENDS = ("auto", "resident", "ffcv")
"""Loader backends (:mod:`fasttarget.loader`): ``auto`` picks resident when the split fits memory."""
