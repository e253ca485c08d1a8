"""Options shared by several commands, declared once.

Subset options (the paper's IPC scaling) for any command that trains on or scores a split::

    @app.command()
    def train(ipc: IpcOption = None, fraction: FractionOption = None, subset_seed: SubsetSeedOption = 0):
        subset = subset_config(ipc, fraction, subset_seed)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fasttarget.config import SubsetConfig

IpcOption = Annotated[Optional[int], typer.Option(
    "--ipc", help="Use only N training images per class (stratified; nested across N for one seed).")]
FractionOption = Annotated[Optional[float], typer.Option(
    "--fraction", help="Use only this share (0, 1] of every class's training images.")]
SubsetSeedOption = Annotated[int, typer.Option(
    "--subset-seed", help="Seed of the per-class order the subset is drawn from.")]


def subset_config(ipc: int | None, fraction: float | None, subset_seed: int):
    """The :class:`~fasttarget.subsets.SubsetConfig` the shared options describe (raises UserError on bad values)."""
    return SubsetConfig(ipc=ipc, fraction=fraction, seed=subset_seed)


def dataset_meta(data: Path):
    """``--data``'s :class:`~fasttarget.dataset.DatasetMeta`, read before a command imports torch.

    The library reads it again; reading it first makes a wrong ``--data`` fail within a blink
    instead of after the seconds torch and ffcv take to import.
    """
    from fasttarget.dataset import DatasetMeta

    return DatasetMeta.load(data)
