"""The end-to-end demo behind ``fasttarget demo``: a list of steps run in order.

Today's steps convert the data (the CIFAR-10 sample shipped in ``data/cifar10-sample`` by
default, or the full data given as ``source``) and inspect the result.
"""

from __future__ import annotations

from pathlib import Path

# The sample ships with the repository (``scripts/make_sample.py`` made it).
SAMPLE_SOURCE = Path(__file__).resolve().parents[2] / "data" / "cifar10-sample" / "cifar-10-batches-bin"
