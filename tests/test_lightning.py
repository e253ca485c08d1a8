"""The Lightning data module (skipped when Lightning is not installed)."""

from __future__ import annotations

import pytest
import torch

lightning = pytest.importorskip("lightning")

from fasttarget.lightning import LoaderDataModule  # noqa: E402
from fasttarget.loader import LoaderConfig  # noqa: E402


class _Linear(lightning.LightningModule):
    """Records what it was fed, so the test can compare with the loader's own batches."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
        self.seen: list[torch.Tensor] = []
        self.validated = 0

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.indices.clone())
        return torch.nn.functional.cross_entropy(self.net(batch.images), batch.labels)

    def validation_step(self, batch, batch_idx):
        self.validated += len(batch.labels)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _trainer(**kw) -> lightning.Trainer:
    return lightning.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, **kw)


def test_fit_consumes_the_loaders_batches_and_resumes_mid_epoch(sample_dir, tmp_path):
    train = LoaderConfig(sample_dir, split="test", batch_size=100, seed=3)
    val = LoaderConfig(sample_dir, split="test", batch_size=250, shuffle=False, drop_last=False)
    dm, model = LoaderDataModule(train, val), _Linear()
    checkpoint = lightning.pytorch.callbacks.ModelCheckpoint(tmp_path, every_n_train_steps=13, save_top_k=-1)
    _trainer(max_epochs=2, callbacks=[checkpoint]).fit(model, datamodule=dm)
    assert model.validated == 2 * 1000
    assert len(model.seen) == 20  # two epochs of 10 batches
    first, second = torch.cat(model.seen[:10]), torch.cat(model.seen[10:])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(1000))
    assert not torch.equal(first, second)  # each fit epoch is the loader's next epoch

    # Resuming from the checkpoint of step 13 (epoch 1, batch 3) feeds steps 14..20 the very
    # batches of the uninterrupted run.
    (mid,) = tmp_path.glob("*step=13*.ckpt")
    dm, resumed = LoaderDataModule(train), _Linear()
    _trainer(max_epochs=2, enable_checkpointing=False).fit(resumed, datamodule=dm, ckpt_path=mid)
    assert torch.equal(torch.cat(resumed.seen), torch.cat(model.seen[13:]))
