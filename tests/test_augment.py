"""Contract tests every augmentation must pass, plus checks against Kornia on identical parameters."""

from __future__ import annotations

import io
import math

import kornia
import pytest
import torch

from fasttarget.augment import (
    AUGMENT_NAMES,
    AugmentConfig,
    AugRecord,
    Grayscale,
    adjust_color,
    box_mask,
    build_augment,
    sample_beta,
)
from fasttarget.errors import UserError

ALL_NAMES = (*AUGMENT_NAMES, "stdaug+mixup", "stdaug+cutmix", "flip+crop")
B, H, W = 32, 16, 20  # non-square to catch swapped axes


def images(seed: int = 0, batch: int = B) -> torch.Tensor:
    x = torch.rand(batch, 3, H, W, generator=torch.Generator().manual_seed(seed))
    x[:, :, 0, 0] = 0.0  # exact extremes must survive every op in range
    x[:, :, 0, 1] = 1.0
    return x


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_views(x: torch.Tensor, record: AugRecord) -> torch.Tensor:
    """What ``record`` says the augmentation makes of ``x``, one sample at a time with Kornia's ops
    and plain slicing: independent of fasttarget's batched ops and of its fused CPU kernel."""
    p = record.params
    views = []
    for i in range(len(x)):
        v = x[i : i + 1]
        if "color.factors" in p:
            brightness, contrast, saturation = p["color.factors"][i]
            v = kornia.enhance.adjust_brightness_accumulative(v, brightness)
            v = kornia.enhance.adjust_contrast_with_mean_subtraction(v, contrast)
            v = kornia.enhance.adjust_saturation_with_gray_subtraction(v, saturation)
        if "gray.apply" in p and p["gray.apply"][i]:
            v = kornia.color.rgb_to_grayscale(v).expand(1, 3, H, W)
        if "flip.apply" in p and p["flip.apply"][i]:
            v = kornia.geometry.transform.hflip(v)
        if "crop.boxes" in p:
            x0, y0, x1, y1 = p["crop.boxes"][i].tolist()
            corners = torch.tensor([[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]])
            v = kornia.geometry.transform.crop_and_resize(v, corners, (H, W), align_corners=True).clamp(0, 1)
        views.append(v[0])
    views = torch.stack(views)
    if "mixup.lam" in p:
        pairs = enumerate(zip(p["mixup.perm"], p["mixup.lam"]))
        return torch.stack([lam * views[i] + (1 - lam) * views[j] for i, (j, lam) in pairs])
    if "cutmix.boxes" in p:
        mixed = views.clone()
        for i, (j, (x0, y0, x1, y1)) in enumerate(zip(p["cutmix.perm"], p["cutmix.boxes"].tolist())):
            mixed[i, :, y0:y1, x0:x1] = views[j, :, y0:y1, x0:x1]  # end-exclusive box of the partner
        return mixed
    return views


@pytest.fixture(autouse=True)
def global_rng_untouched():
    """Augmentations draw from the given generator only: the global RNG must not move."""
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    yield
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("name", ALL_NAMES)
class TestContract:
    def test_shape_dtype_and_record(self, name):
        x = images()
        out, record = build_augment(name)(x, gen())
        assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
        for key, value in record.params.items():
            assert value.shape[0] == B, key
        aug = build_augment(name)
        assert aug.mixes == (record.mix_perm is not None) == (record.mix_lam is not None)
        if aug.mixes:
            assert record.mix_perm.dtype == torch.int64 and sorted(record.mix_perm.tolist()) == list(range(B))
            assert record.mix_lam.shape == (B,) and record.mix_lam.dtype == torch.float32

    def test_p0_is_identity(self, name):
        x = images()
        out, record = build_augment(AugmentConfig(name=name, p=0.0))(x, gen())
        assert torch.equal(out, x)
        assert not any(v.any() for k, v in record.params.items() if k.endswith(".apply"))
        if record.mix_lam is not None:
            assert torch.equal(record.mix_lam, torch.ones(B))
            targets = torch.eye(B)
            assert torch.equal(record.mix(targets), targets)

    def test_p1_always_applies(self, name):
        x = images()
        aug = build_augment(AugmentConfig(name=name, p=1.0))
        out, record = aug(x, gen())
        masks = [v for k, v in record.params.items() if k.endswith(".apply")]
        assert len(masks) == len(aug.ops) and all(m.all() for m in masks)
        changed = (out != x).flatten(1).any(1)
        if not aug.ops:
            assert not changed.any()
        elif name in ("mixup", "cutmix"):
            # A sample paired with itself, or given an empty CutMix box, is legitimately unchanged.
            effective = (record.mix_perm != torch.arange(B)) & (record.mix_lam < 1)
            assert effective.sum() > B // 2
            assert torch.equal(changed, effective)
        elif name == "crop":
            # RandomResizedCrop may draw the whole image (or fall back to it): that view is the input.
            full = torch.tensor([0.0, 0.0, W - 1, H - 1])
            assert torch.equal(changed, (record.params["crop.boxes"] != full).any(1))
        else:
            assert changed.all()

    def test_values_stay_in_unit_range(self, name):
        for p in (None, 1.0):
            out, _ = build_augment(AugmentConfig(name=name, p=p))(images(), gen())
            assert out.min() >= 0.0 and out.max() <= 1.0

    @pytest.mark.parametrize("fuse_cpu", [True, False])
    def test_replay_from_record_is_exact(self, name, fuse_cpu):
        x = images()
        untouched = x.clone()
        cfg = AugmentConfig(name=name, fuse_cpu=fuse_cpu)
        out, record = build_augment(cfg)(x, gen())
        assert torch.equal(x, untouched), "augmenting wrote into its input"
        # The record travels (saved next to a checkpoint, loaded elsewhere) and a fresh module replays it.
        saved = io.BytesIO()
        torch.save({"params": record.params, "mix_perm": record.mix_perm, "mix_lam": record.mix_lam}, saved)
        saved.seek(0)
        assert torch.equal(build_augment(cfg).apply(untouched, AugRecord(**torch.load(saved))), out)

    def test_deterministic_with_seeded_generator(self, name):
        x = images()
        aug = build_augment(name)
        out1, rec1 = aug(x, gen(7))
        out2, rec2 = aug(x, gen(7))
        assert torch.equal(out1, out2)
        assert rec1.params.keys() == rec2.params.keys()
        assert all(torch.equal(rec1.params[k], rec2.params[k]) for k in rec1.params)
        out3, _ = aug(x, gen(8))
        assert torch.equal(out1, out3) == (name == "noaug")

    def test_call_matches_a_per_sample_reference_of_its_record(self, name):
        x = images()
        # The paper's probabilities, every op on every sample, and the torch ops instead of the fused kernel.
        for kw in ({}, {"p": 1.0}, {"fuse_cpu": False}):
            out, record = build_augment(AugmentConfig(name=name, **kw))(x, gen())
            # 2e-5: the crop's coordinate rounding bound justified in tests/test_kernels.py.
            torch.testing.assert_close(out, reference_views(x, record), atol=2e-5, rtol=0,
                                       msg=lambda m, kw=kw: f"{kw}: {m}")

    def test_mix_targets_rows_sum_to_one(self, name):
        _, record = build_augment(name)(images(), gen())
        onehot = torch.nn.functional.one_hot(torch.arange(B) % 5, 5).float()
        mixed = record.mix(onehot)
        assert torch.allclose(mixed.sum(1), torch.ones(B))
        if record.mix_perm is None:
            assert mixed is onehot

    def test_torch_ops_path_matches_fused_cpu_path(self, name):
        x = images()
        fused = build_augment(name)
        torch_ops = build_augment(AugmentConfig(name=name, fuse_cpu=False))
        record = fused.sample(B, H, W, gen(), "cpu")
        out = torch_ops.apply(x, record)
        torch.testing.assert_close(out, fused.apply(x, record), atol=2e-5, rtol=0)
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(build_augment(AugmentConfig(name=name, p=0.0, fuse_cpu=False))(x, gen())[0], x)

    @pytest.mark.gpu
    def test_cuda_matches_cpu(self, name):
        if not torch.cuda.is_available():
            pytest.skip("needs CUDA")
        x = images()
        aug = build_augment(name)
        record = aug.sample(B, H, W, gen(), "cpu")
        out_cpu = aug.apply(x, record)
        out_gpu = aug.apply(x.cuda(), record.to("cuda"))
        assert out_gpu.device.type == "cuda"
        torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-5, rtol=0)
        out, rec = aug(x.cuda(), gen())  # CPU generator, CUDA images: record lands on CUDA
        assert all(v.device.type == "cuda" for v in rec.params.values())
        assert out.min() >= 0 and out.max() <= 1


def test_cutmix_lambda_is_kept_area():
    x = torch.rand(B, 3, H, W, generator=gen(0))  # all pixels distinct between samples
    out, record = build_augment("cutmix")(x, gen(3))
    boxes = record.params["cutmix.boxes"]
    pasted = box_mask(boxes, H, W)[:, 0]
    torch.testing.assert_close(record.mix_lam, 1 - pasted.float().mean((1, 2)), atol=1e-6, rtol=0)
    # Count, pixel by pixel, where the output still is the sample's own image.
    other = record.mix_perm != torch.arange(B)
    own = (out == x).all(1) & ~(out == x[record.mix_perm]).all(1)
    kept = own.float().mean((1, 2))
    torch.testing.assert_close(kept[other], record.mix_lam[other], atol=1e-6, rtol=0)
    # Clipping is honoured: some boxes touch the border, so λ is not just 1 - cut_ratio**2.
    assert ((boxes[:, 0] == 0) | (boxes[:, 2] == W) | (boxes[:, 1] == 0) | (boxes[:, 3] == H)).any()


def test_mixup_is_pairwise_interpolation():
    x = images()
    out, record = build_augment("mixup")(x, gen(3))
    lam = record.mix_lam.view(-1, 1, 1, 1)
    assert torch.allclose(out, lam * x + (1 - lam) * x[record.mix_perm], atol=1e-6)
    assert record.mix_lam.unique().numel() > B // 2  # per pair, not per batch


def test_beta_sampler_moments():
    for a in (0.8, 1.0, 2.5):
        lam = sample_beta(a, a, 20000, gen()).double()
        var = 1 / (4 * (2 * a + 1))
        assert abs(lam.mean() - 0.5) < 4 * math.sqrt(var / 20000)
        assert abs(lam.var() - var) < 0.1 * var


def test_probabilities_follow_the_paper():
    _, record = build_augment("stdaug")(images(batch=4000), gen())
    for key, p in (("color.apply", 0.8), ("gray.apply", 0.2), ("flip.apply", 0.5), ("crop.apply", 1.0)):
        assert abs(record.params[key].float().mean().item() - p) < 0.03, key


def test_color_matches_kornia_on_identical_factors():
    x = images()
    factors = 0.6 + 0.8 * torch.rand(B, 3, generator=gen())
    ours = adjust_color(x, factors)
    ref = kornia.enhance.adjust_brightness_accumulative(x, factors[:, 0])
    ref = kornia.enhance.adjust_contrast_with_mean_subtraction(ref, factors[:, 1])
    ref = kornia.enhance.adjust_saturation_with_gray_subtraction(ref, factors[:, 2])
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_grayscale_matches_kornia():
    x = images()
    apply = torch.arange(B) % 2 == 0
    ours = Grayscale(p=1.0).apply(x, {"apply": apply})
    gray = kornia.color.rgb_to_grayscale(x).expand_as(x)
    torch.testing.assert_close(ours[apply], gray[apply], atol=1e-6, rtol=0)
    assert torch.equal(ours[~apply], x[~apply])


def test_crop_boxes_follow_kornia_sampling_rules():
    _, record = build_augment("crop")(images(batch=2000), gen())
    boxes = record.params["crop.boxes"]
    assert torch.equal(boxes, boxes.round())
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= W - 1).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= H - 1).all()
    frac = w * h / (H * W)
    # Sides are rounded to whole pixels, so area and ratio may overshoot their ranges by rounding.
    assert frac.min() > 0.04 and frac.max() <= 1.0
    ratio = w / h
    assert ratio.min() > 0.5 and ratio.max() < 2.0
    # Kornia's generator on the same input size gives the same area distribution.
    kgen = kornia.augmentation.random_generator.ResizedCropGenerator((H, W), (0.08, 1.0), (3 / 4, 4 / 3))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        src = kgen(torch.Size([2000, 3, H, W]))["src"]
    kw = src[:, 1, 0] - src[:, 0, 0] + 1
    kh = src[:, 2, 1] - src[:, 1, 1] + 1
    assert abs((kw * kh / (H * W)).mean() - frac.mean()) < 0.03


@pytest.mark.parametrize(
    ("name", "message"),
    [("rotate", "unknown augmentation"), ("stdaug+flip", "twice"), ("mixup+cutmix", "two mixes")],
)
def test_bad_names_raise_user_error(name, message):
    with pytest.raises(UserError, match=message):
        build_augment(name)


def test_bad_config_raises_user_error():
    with pytest.raises(UserError, match="outside"):
        AugmentConfig(p=1.5)
    with pytest.raises(UserError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.5, 0.1))


def test_composition_order_is_canonical():
    assert [op.name for op in build_augment("mixup+crop+color").ops] == ["color", "crop", "mixup"]
    assert [op.name for op in build_augment("stdaug+cutmix").ops] == ["color", "gray", "flip", "crop", "cutmix"]


@pytest.mark.parametrize("fuse_cpu", [True, False])
def test_crop_matches_kornia_crop_and_resize_on_sampled_boxes(fuse_cpu):
    x = images()
    aug = build_augment(AugmentConfig(name="crop", fuse_cpu=fuse_cpu))
    out, record = aug(x, gen(4))
    x0, y0, x1, y1 = record.params["crop.boxes"].unbind(1)
    corners = torch.stack([torch.stack(c, 1) for c in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]], 1)
    theirs = kornia.geometry.transform.crop_and_resize(x, corners, (H, W), align_corners=True)
    # 2e-5: the coordinate rounding bound justified in tests/test_kernels.py.
    torch.testing.assert_close(out, theirs.clamp(0, 1), atol=2e-5, rtol=0)
