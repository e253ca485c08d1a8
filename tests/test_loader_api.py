"""The loader API a training loop of one's own uses: unpacking batches, loader.meta/classes/num_classes,
build_loaders, the one-call Strategy B/C providers, and the Lightning data module's test loader."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fasttarget.cache import CacheBuildConfig, TargetCache, build_cache
from fasttarget.dataset import DatasetMeta
from fasttarget.errors import UserError
from fasttarget.loader import LoaderConfig, ResidentLoader, build_loader, build_loaders
from fasttarget.models import CheckpointInfo, ModelConfig, build_classifier, save_classifier
from fasttarget.targets import CachedTargets, TeacherTargets, cached_targets, load_teacher, teacher_targets


@pytest.fixture(scope="module")
def teacher_and_cache(small_sample_dir, tmp_path_factory):
    meta = DatasetMeta.load(small_sample_dir)
    out = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    net = build_classifier(ModelConfig(width=0.125, num_classes=10))
    path = save_classifier(out / "t.pt", net, CheckpointInfo(net.config, 0.1, meta.fingerprint, meta.mean, meta.std))
    cache = build_cache(CacheBuildConfig(small_sample_dir, path, out / "t.h5", device="cpu", progress=False)).path
    return path, cache


def test_a_batch_unpacks_to_images_and_targets_else_labels(small_sample_dir, teacher_and_cache):
    cfg = LoaderConfig(small_sample_dir, split="test", batch_size=50, augment="stdaug+mixup", seed=1)
    plain, with_targets = build_loader(cfg), build_loader(cfg, targets=cached_targets(teacher_and_cache[1], small_sample_dir))
    for (images, labels), batch, (images_t, targets), batch_t in zip(plain, build_loader(cfg), with_targets,
                                                                      build_loader(cfg, with_targets.targets)):
        assert torch.equal(images, batch.images) and torch.equal(labels, batch.labels)
        assert torch.equal(images_t, images)  # same seed, same views
        assert targets.shape == (50, 10) and torch.equal(targets, batch_t.targets)
        # already mixed with the batch's λ: rows are not one teacher row but the mix of two
        raw = torch.softmax(TargetCache.open(teacher_and_cache[1]).gather(batch_t.indices, "cpu").float() / 2, 1)
        torch.testing.assert_close(targets, batch_t.record.mix(raw))
        assert not torch.allclose(targets, raw)


def test_loader_meta_classes_num_classes(small_sample_dir):
    loader = build_loader(LoaderConfig(small_sample_dir, split="test", batch_size=100))
    meta = DatasetMeta.load(small_sample_dir)
    assert loader.meta == meta and loader.classes == meta.classes and loader.num_classes == 10
    assert loader.classes[:2] == ("airplane", "automobile")
    arrays = ResidentLoader.from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 2, LoaderConfig(batch_size=2),
                                        mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(UserError, match="build it with build_loader"):
        arrays.num_classes


def test_build_loaders_gives_the_training_loader_and_the_whole_test_split_in_order(small_sample_dir):
    train, test = build_loaders(LoaderConfig(small_sample_dir, batch_size=64, augment="stdaug", seed=2))
    assert train.cfg.split == "train" and len(train) == 640 // 64
    indices = torch.cat([b.indices for b in test])
    assert torch.equal(indices, torch.arange(200)) and test.cfg.augment == "noaug" and len(test) == 4


def test_one_call_providers_match_the_strategies(small_sample_dir, teacher_and_cache):
    teacher_path, cache_path = teacher_and_cache
    meta = DatasetMeta.load(small_sample_dir)
    b = teacher_targets(teacher_path, small_sample_dir, temperature=4.0)
    c = cached_targets(cache_path, small_sample_dir, teacher=teacher_path)
    assert isinstance(b, TeacherTargets) and isinstance(c, CachedTargets) and b.num_classes == c.num_classes == 10
    # B on the unaugmented view is C's cached row (same teacher, same T)
    batch = next(iter(build_loader(LoaderConfig(small_sample_dir, batch_size=64, augment="noaug", shuffle=False))))
    teacher, _ = load_teacher(teacher_path, meta, "cpu")
    torch.testing.assert_close(b(batch), torch.softmax(teacher(batch.images) / 4.0, 1))
    torch.testing.assert_close(teacher_targets(teacher_path, small_sample_dir)(batch), c(batch), atol=2e-3, rtol=0)
    with pytest.raises(UserError, match="does not exist"):
        cached_targets(cache_path, small_sample_dir, teacher=cache_path.with_name("other.pt"))


def test_lightning_tests_on_the_test_loader_and_logs_with_the_true_batch_size(small_sample_dir):
    lightning = pytest.importorskip("lightning", reason="Lightning is the optional extra fasttarget[lightning]")
    from lightning.pytorch.utilities.data import extract_batch_size

    from fasttarget.lightning import LoaderDataModule

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(1, 1)

        def test_step(self, batch, batch_idx):
            images, labels = batch
            # logged without batch_size: Lightning infers it from the batch
            self.log("rows", float(len(labels)), on_epoch=True)

    train = LoaderConfig(small_sample_dir, batch_size=100)
    test = LoaderConfig(small_sample_dir, split="test", batch_size=60, shuffle=False, drop_last=False)
    batch = next(iter(build_loader(LoaderConfig(small_sample_dir, batch_size=64, augment="stdaug+cutmix"))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extract_batch_size(batch) == 64
    trainer = lightning.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False)
    (result,) = trainer.test(Module(), datamodule=LoaderDataModule(train, test=test), verbose=False)
    # batches of 60, 60, 60, 20 rows, each weighted by its size: (3·60² + 20²) / 200
    assert result["rows"] == pytest.approx(56.0)
    with pytest.raises(UserError, match="test=LoaderConfig"):
        LoaderDataModule(train).test_dataloader()
