"""Strategy A/B/C target providers on real CIFAR-10 images (its first 1,000 training images).

The teacher is a narrow ResNet-18 (width 0.125) with seeded random weights whose head is
scaled ×3, so its soft targets are far from uniform (mean top probability ≈ 0.7 at T=2) yet
not saturated, and a wrong row, view, normalization or mix shows.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fasttarget.augment import build_augment
from fasttarget.cache import CacheBuildConfig, build_cache
from fasttarget.convert import ConvertConfig, convert
from fasttarget.dataset import DatasetMeta, read_split
from fasttarget.errors import UserError
from fasttarget.loader import Batch
from fasttarget.models import CheckpointInfo, ModelConfig, build_classifier, load_classifier, save_classifier
from fasttarget.targets import (
    CachedTargets,
    OneHotTargets,
    TargetConfig,
    TargetProvider,
    TeacherModel,
    TeacherTargets,
    build_targets,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
AUGMENTS = ("noaug", "stdaug", "mixup", "cutmix", "stdaug+mixup", "stdaug+cutmix")
T = 2.0
BATCH = 32


def save_teacher(path, meta: DatasetMeta, seed: int = 0, mean=None, std=None, num_classes=None):
    """A seeded narrow teacher checkpoint; its head is scaled ×3 so targets are peaked, not saturated."""
    torch.manual_seed(seed)
    cfg = ModelConfig(width=0.125, num_classes=num_classes or meta.num_classes)
    net = build_classifier(cfg)
    with torch.no_grad():
        net.head.weight.mul_(3)
    info = CheckpointInfo(cfg, 0.1, meta.fingerprint, mean or meta.mean, std or meta.std)
    return save_classifier(path, net, info)


@pytest.fixture(scope="module")
def cifar1k_dir(cifar10_source, tmp_path_factory):
    """Real CIFAR-10's first 1,000 train and 200 test images, converted once per session.

    Small enough that building a cache and checking it against fresh teacher passes stays cheap
    on CPU; kept under the session's base temp so test modules share it.
    """
    out = tmp_path_factory.getbasetemp() / "cifar10-1k"
    if not (out / "meta.json").is_file():
        source = tmp_path_factory.mktemp("cifar10-1k-source")
        for name, count in (("data_batch_1.bin", 1000), ("test_batch.bin", 200)):
            with open(cifar10_source / name, "rb") as fh:
                (source / name).write_bytes(fh.read(count * 3073))  # 1 label byte + 3,072 pixels per record
        shutil.copy(cifar10_source / "batches.meta.txt", source)
        convert(ConvertConfig("cifar10", source, out, force=True, progress=False))
    return out


@pytest.fixture(scope="module")
def data(cifar1k_dir):
    meta = DatasetMeta.load(cifar1k_dir)
    images, labels = read_split(cifar1k_dir, "train")
    return cifar1k_dir, meta, images, labels


@pytest.fixture(scope="module")
def teacher_path(data, tmp_path_factory):
    _, meta, _, _ = data
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", meta)


@pytest.fixture(scope="module")
def cache_path(data, teacher_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "targets.h5"
    build_cache(CacheBuildConfig(data[0], teacher_path, out, batch_size=256, dtype="float32", progress=False))
    return out


def normalize(raw: torch.Tensor, mean, std) -> torch.Tensor:
    return (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def originals(data, indices: torch.Tensor) -> torch.Tensor:
    """uint8 HWC rows → float [B,3,H,W] in [0,1]."""
    return torch.from_numpy(data[2][indices.numpy()]).permute(0, 3, 1, 2).float().div(255)


def make_batch(data, augment: str, seed: int = 0) -> Batch:
    """One augmented, normalized batch of random train samples, as the loader would emit it."""
    _, meta, _, labels = data
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(labels), generator=gen)[:BATCH]
    views, record = build_augment(augment)(originals(data, indices), gen)
    images = normalize(views, meta.mean, meta.std).contiguous(memory_format=torch.channels_last)
    return Batch(images=images, labels=torch.from_numpy(labels[indices.numpy()]), indices=indices,
                 record=record, targets=None)


def providers(data, teacher_path, cache_path) -> dict[str, TargetProvider]:
    _, meta, _, _ = data
    return {
        "A": build_targets(TargetConfig("A"), meta, "cpu"),
        "B": build_targets(TargetConfig("B", T, teacher=teacher_path), meta, "cpu"),
        "C": build_targets(TargetConfig("C", T, teacher=teacher_path, cache=cache_path), meta, "cpu"),
    }


@pytest.mark.parametrize("augment", AUGMENTS)
def test_rows_are_distributions_for_every_strategy(data, teacher_path, cache_path, augment):
    batch = make_batch(data, augment)
    for name, provider in providers(data, teacher_path, cache_path).items():
        assert isinstance(provider, TargetProvider)
        targets = provider(batch)
        assert targets.shape == (BATCH, data[1].num_classes), name
        assert targets.dtype == torch.float32 and targets.device == batch.images.device, name
        assert (targets >= 0).all(), name
        torch.testing.assert_close(targets.sum(1), torch.ones(BATCH), msg=f"strategy {name}, {augment}")


@pytest.mark.parametrize("augment", ["stdaug", "stdaug+mixup", "cutmix"])
def test_teacher_targets_equal_plain_softmax_on_the_student_view(data, teacher_path, augment):
    batch = make_batch(data, augment, seed=1)
    targets = build_targets(TargetConfig("B", T, teacher=teacher_path), data[1], "cpu")(batch)
    net, _ = load_classifier(teacher_path)
    with torch.no_grad():
        expected = torch.softmax(net(batch.images.contiguous()) / T, dim=1)
    torch.testing.assert_close(targets, expected, atol=1e-5, rtol=1e-4)
    assert targets.max(1).values.mean() > 0.3, "teacher fixture should give peaked targets"


def test_teacher_with_its_own_normalization_is_renormalized(data, tmp_path):
    _, meta, _, _ = data
    t_mean, t_std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
    path = save_teacher(tmp_path / "other_norm.pt", meta, seed=3, mean=t_mean, std=t_std)
    batch = make_batch(data, "stdaug", seed=2)
    targets = build_targets(TargetConfig("B", T, teacher=path), meta, "cpu")(batch)
    raw = batch.images * torch.tensor(meta.std).view(1, 3, 1, 1) + torch.tensor(meta.mean).view(1, 3, 1, 1)
    net, _ = load_classifier(path)
    with torch.no_grad():
        expected = torch.softmax(net(normalize(raw, t_mean, t_std)) / T, dim=1)
        naive = torch.softmax(net(batch.images.contiguous()) / T, dim=1)
    torch.testing.assert_close(targets, expected, atol=1e-5, rtol=1e-4)
    assert (targets - naive).abs().max() > 1e-2, "the test needs normalizations that matter"


@pytest.mark.parametrize("augment", ["noaug", "stdaug"])
def test_cached_targets_equal_a_fresh_teacher_pass_over_originals(data, teacher_path, cache_path, augment):
    batch = make_batch(data, augment, seed=4)
    targets = build_targets(TargetConfig("C", T, cache=cache_path), data[1], "cpu")(batch)
    net, _ = load_classifier(teacher_path)
    with torch.no_grad():
        expected = torch.softmax(net(normalize(originals(data, batch.indices), data[1].mean, data[1].std)) / T, dim=1)
    torch.testing.assert_close(targets, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("augment", ["mixup", "cutmix", "stdaug+mixup"])
def test_mixing_uses_the_batch_lambda_and_permutation(data, teacher_path, cache_path, augment):
    batch = make_batch(data, augment, seed=6)
    lam, perm = batch.record.mix_lam, batch.record.mix_perm
    assert perm is not None and not torch.equal(perm, torch.arange(BATCH)) and (lam < 1).any()
    lam = lam.view(-1, 1).float()
    onehot = F.one_hot(batch.labels, data[1].num_classes).float()
    got = providers(data, teacher_path, cache_path)
    torch.testing.assert_close(got["A"](batch), lam * onehot + (1 - lam) * onehot[perm])
    unmixed = CachedTargets(got["C"].cache, T)(Batch(batch.images, batch.labels, batch.indices,
                                                     build_augment("noaug")(batch.images, torch.Generator())[1], None))
    torch.testing.assert_close(got["C"](batch), lam * unmixed + (1 - lam) * unmixed[perm])


def test_one_hot_without_mix_is_the_label():
    record = build_augment("flip")(torch.rand(3, 3, 4, 4), torch.Generator().manual_seed(0))[1]
    batch = Batch(torch.zeros(3, 3, 4, 4), torch.tensor([2, 0, 1]), torch.arange(3), record, None)
    assert torch.equal(OneHotTargets(3)(batch), torch.eye(3)[[2, 0, 1]])


def test_temperature_softens_targets(data, teacher_path, cache_path):
    batch = make_batch(data, "noaug", seed=7)
    sharp = build_targets(TargetConfig("C", 1.0, cache=cache_path), data[1], "cpu")(batch)
    soft = build_targets(TargetConfig("C", 4.0, cache=cache_path), data[1], "cpu")(batch)
    assert (soft.max(1).values < sharp.max(1).values).all()


def test_teacher_model_is_frozen_eval_and_wrapped_once(data, teacher_path):
    net, _ = load_classifier(teacher_path)
    net.train()
    teacher = TeacherModel(net, data[1].mean, data[1].std)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    provider = TeacherTargets(teacher, T)
    assert provider.teacher is teacher and provider.num_classes == data[1].num_classes
    out = provider(make_batch(data, "noaug"))
    assert not out.requires_grad


def test_config_and_build_refusals(data, tmp_path, teacher_path, cache_path):
    _, meta, _, _ = data
    with pytest.raises(UserError, match="unknown strategy"):
        TargetConfig("D")
    with pytest.raises(UserError, match="needs a teacher"):
        TargetConfig("B")
    with pytest.raises(UserError, match="needs a target cache"):
        TargetConfig("C", teacher=teacher_path)
    with pytest.raises(UserError, match="temperature"):
        TargetConfig("A", temperature=0)
    wrong = save_teacher(tmp_path / "k7.pt", meta, num_classes=7)
    with pytest.raises(UserError, match="predicts 7 classes"):
        build_targets(TargetConfig("B", teacher=wrong), meta, "cpu")
    other = save_teacher(tmp_path / "other.pt", meta, seed=9)
    with pytest.raises(UserError, match="teacher SHA-256"):
        build_targets(TargetConfig("C", teacher=other, cache=cache_path), meta, "cpu")
    with pytest.raises(UserError, match="does not exist"):
        build_targets(TargetConfig("C", teacher=tmp_path / "missing.pt", cache=cache_path), meta, "cpu")


@pytest.fixture(scope="module")
def cifar_arrays(cifar10_source):
    """The first 4,096 real CIFAR-10 training images straight from the source (no ffcv needed)."""
    from fasttarget.sources import open_source

    split = open_source("cifar10", cifar10_source).train
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    return split.images[:4096], split.labels[:4096].astype("int64"), mean, std


@pytest.mark.gpu
@needs_cuda
def test_side_stream_teacher_targets_equal_inline_ones(cifar_arrays):
    """B's teacher runs for batch n+1 on the loader's side stream while the main stream is busy;
    its targets must equal the same teacher run inline on the main stream on the same images."""
    from fasttarget.loader import LoaderConfig, ResidentLoader

    images, labels, mean, std = cifar_arrays
    torch.manual_seed(0)
    net = build_classifier(ModelConfig(width=0.5)).cuda()
    with torch.no_grad():
        net.head.weight.mul_(3)
    provider = TeacherTargets(TeacherModel(net, mean, std), T)
    cfg = LoaderConfig(batch_size=128, augment="stdaug+mixup", device="cuda", seed=3)
    overlapped = ResidentLoader.from_arrays(images, labels, cfg, mean=mean, std=std, targets=provider)
    plain = ResidentLoader.from_arrays(images, labels, cfg, mean=mean, std=std)
    busy = torch.randn(4096, 4096, device="cuda")
    count = 0
    for side, inline in zip(overlapped, plain):
        busy = torch.tanh(busy @ busy)  # main-stream work the side stream overlaps
        torch.testing.assert_close(side.images, inline.images)
        torch.testing.assert_close(side.targets, provider(inline), atol=1e-4, rtol=1e-3)
        count += 1
    assert count == len(plain) == 4096 // 128


@pytest.mark.gpu
@needs_cuda
def test_side_stream_teacher_step_within_15_percent_of_one_hot(cifar10_source, tmp_path):
    """With a teacher as large as the student (ResNet-18 ×1), B's full training step (loader +
    StdAug + teacher on the side stream + student step) costs at most 1.15× A's."""
    from fasttarget.bench import BenchConfig, BenchContext, Comparison, StudentStep, measure

    steps, batch = 20, 128
    ctx = BenchContext(BenchConfig(suites=("step",), source=cifar10_source, device="cuda", width=1.0), tmp_path)

    def training(strategy: str):
        loader = ctx.resident_loader(batch, "stdaug", ctx.targets(strategy))
        student = StudentStep(1.0, ctx.meta.num_classes, ctx.device)
        batches = itertools.chain.from_iterable(itertools.repeat(loader))  # each pass is the next epoch
        return lambda: [student(next(batches)) for _ in range(steps)]

    row = measure(Comparison("step B b128", "img/s", steps * batch, training("B"), "step A b128", training("A")),
                  repeats=5, warmup=3, device="cuda")
    print(f"\nCUDA step, ResNet-18 x1 student and teacher, batch {batch}: A {row.baseline_value:,.0f} img/s, "
          f"B {row.value:,.0f} img/s, B/A step time {1 / row.ratio:.3f}x")
    assert 1 / row.ratio <= 1.15


def _fkd_reference(logits: np.ndarray, k: int, t0: float, t: float) -> np.ndarray:
    """The target a top-k cache must give, row by row in float64, from the full teacher logits.

    At t == t0: FKD's marginal smoothing — the kept classes' probabilities of the full softmax at
    t0, the rest of the mass spread evenly over the other classes. At another t: the softmax at t
    of the logits with every other class replaced by the one logit that keeps their mass at t0.
    """
    out = np.empty_like(logits, dtype=np.float64)
    c = logits.shape[1]
    for i, z in enumerate(logits.astype(np.float64)):
        top = np.argsort(-z)[:k]
        others = np.setdiff1d(np.arange(c), top)
        if t == t0:
            p = np.exp(z / t0) / np.exp(z / t0).sum()
            out[i] = (1 - p[top].sum()) / (c - k)
            out[i, top] = p[top]
        else:
            flat = z.copy()
            flat[others] = t0 * np.log(np.exp(z[others] / t0).mean())
            out[i] = np.exp(flat / t) / np.exp(flat / t).sum()
    return out


@pytest.mark.parametrize("t", [2.0, 1.0, 4.0], ids=["T=T0", "colder", "warmer"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_top_k_targets_equal_fkd_marginal_smoothing(t, dtype):
    from fasttarget.cache import CacheForm, stored_rows
    from fasttarget.targets import topk_probabilities

    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0)) * 3
    values, classes = stored_rows(logits, CacheForm(top_k=5, dtype=dtype), temperature=2.0)
    got = topk_probabilities(values, classes, 1000, t)
    assert got.dtype == torch.float32 and got.shape == (64, 1000)
    torch.testing.assert_close(got.sum(1), torch.ones(64), atol=1e-5, rtol=0)
    # float16 rounds the logits (|z| < 16: error ≤ 2^-7), which moves probabilities by ~1%.
    tol = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(got.numpy(), _fkd_reference(logits.numpy(), 5, 2.0, t), rtol=tol, atol=1e-7)


def test_cached_targets_from_a_top_k_cache(tmp_path):
    """CachedTargets of a top-k cache: topk_probabilities of the gathered rows, then mixed."""
    import h5py

    from fasttarget.cache import CACHE_FORMAT, FORMAT_VERSION, CacheForm, TargetCache, _sha256_rows, stored_rows

    logits = torch.randn(100, 10, generator=torch.Generator().manual_seed(1))
    values, classes = (t.numpy() for t in stored_rows(logits, CacheForm(top_k=3), 2.0))
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["topk_logits"], f["topk_classes"] = values, classes
        f.attrs.update({"format": CACHE_FORMAT, "format_version": FORMAT_VERSION, "num_classes": 10,
                        **CacheForm(top_k=3).attrs, "logits_sha256": _sha256_rows(values, classes)})
    provider = CachedTargets(TargetCache.open(tmp_path / "t.h5", form=CacheForm(top_k=3)), temperature=2.0)
    indices = torch.tensor([7, 3, 7])
    batch = SimpleNamespace(indices=indices, images=torch.zeros(3, 3, 4, 4), record=SimpleNamespace(mix=lambda t: t))
    expected = _fkd_reference(logits[indices].numpy(), 3, 2.0, 2.0)
    np.testing.assert_allclose(provider(batch).numpy(), expected, rtol=2e-2, atol=1e-6)
