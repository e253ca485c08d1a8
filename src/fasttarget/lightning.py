"""A Lightning ``LightningDataModule`` over fasttarget loaders (Lightning is an optional extra).

``pip install fasttarget[lightning]``. This module imports without Lightning; the data module
class is built on first access of :data:`LoaderDataModule`.

The loaders are handed to Lightning as they are (iterables with ``__len__``): batches arrive
already on ``cfg.device`` as :class:`~fasttarget.loader.Batch`, each ``fit`` epoch is one pass
(the loader advances its epoch itself), and under DDP each rank's loader takes its shard from
the process group Lightning initialized before ``setup``. The training loader's position goes
into Lightning checkpoints, so a resumed fit continues mid-epoch with the same batches.

Example:
    >>> from fasttarget.lightning import LoaderDataModule  # doctest: +SKIP
    >>> dm = LoaderDataModule(LoaderConfig("data/cifar10", augment="stdaug"),  # doctest: +SKIP
    ...                       LoaderConfig("data/cifar10", split="test", shuffle=False, drop_last=False))
    >>> lightning.Trainer(max_epochs=10).fit(module, datamodule=dm)  # doctest: +SKIP

where ``module.training_step(batch, i)`` reads ``batch.images`` and ``batch.labels``, or unpacks
``images, targets = batch`` (:class:`~fasttarget.loader.Batch`). Lightning infers the ``batch_size``
of ``self.log`` from the batch by iterating it: a ``Batch`` yields its two tensors of ``B`` rows, so
every logged mean is weighted by the true batch size, with no "ambiguous collection" warning.
"""

from __future__ import annotations

import functools
from typing import Any

from fasttarget.errors import UserError
from fasttarget.loader import LoaderConfig, TargetFn, build_loader


@functools.cache
def _datamodule_class() -> type:
    try:
        import lightning
    except ImportError as err:
        raise UserError("fasttarget.lightning needs Lightning: `pip install fasttarget[lightning]`") from err

    class LoaderDataModule(lightning.LightningDataModule):
        """Training (and optional validation) loaders built from :class:`LoaderConfig`.

        Args:
            train: the training split's loader config.
            val: the validation loader's config, or ``None`` for no validation.
            test: the loader config of ``Trainer.test``, or ``None`` (then ``val``'s).
            targets: target provider for training batches (``Batch -> [B,K]``), or ``None``.
        """

        def __init__(self, train: LoaderConfig, val: LoaderConfig | None = None,
                     targets: TargetFn | None = None, test: LoaderConfig | None = None) -> None:
            super().__init__()
            self.train_config, self.val_config, self.targets = train, val, targets
            self.test_config = test if test is not None else val
            self.train_loader: Any = None
            self.val_loader: Any = None
            self.test_loader: Any = None
            self._pending_state: dict[str, int] | None = None

        def setup(self, stage: str) -> None:
            # Built here, not in __init__, so that under DDP the process group exists and
            # each rank's loader takes its own shard.
            if self.train_loader is None and stage == "fit":
                self.train_loader = build_loader(self.train_config, self.targets)
                if self._pending_state is not None:
                    self.train_loader.load_state_dict(self._pending_state)
            if self.val_loader is None and self.val_config is not None and stage in ("fit", "validate"):
                self.val_loader = build_loader(self.val_config)
            if self.test_loader is None and self.test_config is not None and stage == "test":
                self.test_loader = build_loader(self.test_config)

        def train_dataloader(self) -> Any:
            return self.train_loader

        def val_dataloader(self) -> Any:
            return self.val_loader if self.val_loader is not None else []

        def test_dataloader(self) -> Any:
            if self.test_config is None:
                raise UserError("Trainer.test needs a test split: pass LoaderDataModule(..., test=LoaderConfig(...))")
            return self.test_loader

        def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
            # Batches are made on cfg.device already; Lightning's generic copy would rebuild them.
            return batch

        def state_dict(self) -> dict[str, Any]:
            return {} if self.train_loader is None else {"train": self.train_loader.state_dict()}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            if "train" not in state_dict:
                return
            if self.train_loader is None:
                self._pending_state = state_dict["train"]
            else:
                self.train_loader.load_state_dict(state_dict["train"])

    return LoaderDataModule


def __getattr__(name: str) -> Any:
    if name == "LoaderDataModule":
        return _datamodule_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LoaderDataModule"]
