"""The ImageNet-scale path on a small imagenet layout: variable-size convert, decode-time crops drawn
by fasttarget (seeded, recorded, replayable), streaming evaluation, Strategies A/B/C at ``--res 64``
with kill-and-resume.

The layout is made from ``../shared/data/imagenet-sample`` (real photos) when it is there, else from
generated variable-size images; either way it holds the awkward files converters meet: grayscale,
PNG bytes named ``.JPEG``, an EXIF-rotated JPEG and a CMYK JPEG, and a ``val/`` split made here.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fasttarget.augment import ResizedCrop, center_crop_boxes
from fasttarget.convert import ConvertConfig, convert
from fasttarget.dataset import DatasetMeta, check_dataset, read_image_sizes
from fasttarget.loader import FfcvLoader, LoaderConfig, build_loader

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGENET_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "imagenet-sample" / "train"
FASTTARGET = Path(sys.executable).with_name("fasttarget")
CLASSES = 6
MAX_SIDE = 160
RES = 64
# Small and quick: 64-px views of a few images, batch 8, the narrowest net that trains at 64 px on CPU.
QUICK = ["--res", str(RES), "--width", "0.25", "--batch-size", "8", "--aug", "stdaug", "--device", "cpu",
         "--no-progress"]
TIMING = ("img_per_s", "wall_s")


def _photos(rng: np.random.Generator):
    """One RGB photo per class: the real sample's first classes, else smooth generated images of varied sizes."""
    from PIL import Image

    if IMAGENET_SAMPLE.is_dir():
        for folder in sorted(IMAGENET_SAMPLE.iterdir())[:CLASSES]:
            with Image.open(next(iter(sorted(folder.iterdir())))) as im:
                yield folder.name, im.convert("RGB")
        return
    for c in range(CLASSES):
        h, w = (int(x) for x in rng.integers(70, 260, 2))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([np.sin(6 * xx + c), np.cos(5 * yy - c), np.sin(4 * (xx + yy))], -1)
        pixels = ((base + 1) * 110 + rng.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)
        yield f"n{c:08d}", Image.fromarray(pixels)


def make_imagenet_layout(root: Path) -> Path:
    """``train/<wnid>/`` with five files per class (RGB, grayscale, PNG-named-.JPEG, EXIF-rotated, CMYK)
    and ``val/<wnid>/`` with two crops per class."""
    from PIL import Image

    for wnid, im in _photos(np.random.default_rng(0)):
        train, val = root / "train" / wnid, root / "val" / wnid
        train.mkdir(parents=True)
        val.mkdir(parents=True)
        im.save(train / "rgb.JPEG", quality=90)
        im.convert("L").save(train / "gray.JPEG", quality=90)
        png = io.BytesIO()
        im.resize((max(im.width // 2, 8), max(im.height // 2, 8))).save(png, "PNG")
        (train / "png.JPEG").write_bytes(png.getvalue())
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90° clockwise to display"
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(train / "exif.JPEG", quality=90, exif=exif)
        im.convert("CMYK").save(train / "cmyk.JPEG", quality=90)
        im.crop((0, 0, im.width * 3 // 4, im.height)).save(val / "left.JPEG", quality=90)
        im.crop((0, im.height // 4, im.width, im.height)).save(val / "bottom.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def imagenet_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagenet_layout(tmp_path_factory.mktemp("imagenet-src"))


@pytest.fixture(scope="module")
def imagenet_dir(imagenet_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imagenet")
    convert(ConvertConfig("imagenet", imagenet_source, out, force=True, max_side=MAX_SIDE, progress=False))
    return out


def _loader(data: Path, **kw) -> FfcvLoader:
    cfg = {"batch_size": 8, "augment": "stdaug", "res": RES, "seed": 0, **kw}
    return build_loader(LoaderConfig(data, **cfg))


# ---------------------------------------------------------------- convert


def test_convert_keeps_each_image_size_and_meta_describes_them(imagenet_dir, imagenet_source):
    meta = check_dataset(imagenet_dir)
    assert meta.image_shape is None
    assert (meta.encoding, meta.jpeg_quality, meta.max_side, meta.compress_probability) == ("jpg", 90, MAX_SIDE, None)
    assert (meta.count("train"), meta.count("test")) == (5 * CLASSES, 2 * CLASSES)
    for split in ("train", "test"):
        sizes = read_image_sizes(imagenet_dir, split)
        ranges = meta.splits[split].size_ranges
        assert ranges["height"][0::2] == (sizes[:, 0].min(), sizes[:, 0].max())
        assert ranges["width"][0::2] == (sizes[:, 1].min(), sizes[:, 1].max())
        assert sizes.max() <= MAX_SIDE and len(np.unique(sizes, axis=0)) > 1
    # Each image keeps its own size, downscaled (by FFCV's writer rule) when its longer side exceeds the cap.
    from PIL import Image

    from fasttarget.sources import open_source

    files = open_source("imagenet", imagenet_source).train.files
    for path, stored in zip(files, read_image_sizes(imagenet_dir, "train")):
        with Image.open(path) as im:
            size = np.array([im.height, im.width])
        if size.max() > MAX_SIDE:
            size = (MAX_SIDE / size.max() * size[::-1]).astype(int)[::-1]
        assert stored.tolist() == size.tolist(), path


def test_imagenet_max_side_defaults_to_500():
    assert ConvertConfig("imagenet", ".", "out").side_cap == 500
    assert ConvertConfig("imagenet", ".", "out", max_side=0).side_cap is None
    assert ConvertConfig("imagefolder", ".", "out").side_cap is None


# ---------------------------------------------------------------- crops drawn before decoding


def _torchvision_box(height: int, width: int, area_u, aspect_u, x_u: float, y_u: float,
                     scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` with its uniforms given: ``(x0, y0, w, h)``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for a, r in zip(area_u, aspect_u):
        target_area = area * (scale[0] + a * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + r * (log_ratio[1] - log_ratio[0]))
        w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(x_u * (width - w + 1)), int(y_u * (height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def test_planned_crops_follow_torchvisions_rule_per_sample_size():
    rng = np.random.default_rng(1)
    n = 2000
    sizes = np.stack([rng.integers(20, 500, n), rng.integers(20, 500, n)], 1)
    sizes[:50] = [[500, 20]] * 25 + [[20, 500]] * 25  # extreme shapes: no candidate fits, the center fallback
    crop = ResizedCrop(1.0, (0.08, 1.0), (3 / 4, 4 / 3))
    boxes = crop.plan(torch.from_numpy(sizes), torch.Generator().manual_seed(5))["boxes"].numpy()
    # The same uniforms, in the order plan draws them: apply, 10 areas, 10 aspects, x, y.
    g = torch.Generator().manual_seed(5)
    _, area_u, aspect_u, x_u, y_u = (torch.rand(n, *s, generator=g, dtype=torch.float32).double().numpy()
                                     for s in ((), (10,), (10,), (), ()))
    want = np.array([_torchvision_box(int(h), int(w), area_u[i], aspect_u[i], x_u[i], y_u[i])
                     for i, (h, w) in enumerate(sizes)])
    # float32 against torchvision's float64 could round a side the other way on an exact .5; these draws do not.
    np.testing.assert_array_equal(boxes, want)
    assert (boxes[:25, 2:] == [20, 27]).all() and (boxes[25:50, 2:] == [27, 20]).all()  # ratio-clamped, centered
    assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] > 0)).all()
    assert (boxes[:, 0] + boxes[:, 2] <= sizes[:, 1]).all() and (boxes[:, 1] + boxes[:, 3] <= sizes[:, 0]).all()


def test_planning_batches_at_once_gives_each_batch_the_boxes_of_its_own_generator():
    rng = np.random.default_rng(3)
    sizes = torch.from_numpy(np.stack([rng.integers(20, 500, 2000), rng.integers(20, 500, 2000)], 1))
    sizes[:40] = torch.tensor([[500, 20], [20, 500]]).repeat(20, 1)  # the centred fallback too
    for p in (1.0, 0.5):
        crop = ResizedCrop(p, (0.08, 1.0), (3 / 4, 4 / 3))
        at_once = crop.plan_batches(sizes, [torch.Generator().manual_seed(k) for k in range(32)], 64)  # last: 16 rows
        one_by_one = [crop.plan(chunk, torch.Generator().manual_seed(k)) for k, chunk in enumerate(sizes.split(64))]
        for key in ("apply", "boxes"):
            assert torch.equal(at_once[key], torch.cat([plan[key] for plan in one_by_one])), (p, key)
    assert not at_once["apply"].all() and at_once["apply"].any()
    with pytest.raises(ValueError, match="one per batch"):
        crop.plan_batches(sizes, [torch.Generator()] * 31, 64)


def test_center_crop_is_ffcvs_rule():
    sizes = torch.tensor([[375, 500], [500, 333], [64, 64]])
    for (h, w), (x0, y0, cw, ch) in zip(sizes.tolist(), center_crop_boxes(sizes).tolist()):
        side = int(224 / 256 * min(h, w))
        assert (x0, y0, cw, ch) == ((w - side) // 2, (h - side) // 2, side, side)


def test_center_crop_is_torchvisions_resize256_centercrop224_box_on_odd_sizes():
    # Odd sides, odd and even differences: where flooring and rounding an offset could part ways.
    odd = torch.arange(1, 1000, 2)
    sizes = torch.stack([odd.repeat_interleave(7), torch.tensor([1, 3, 223, 255, 257, 333, 999]).repeat(len(odd))], 1)
    boxes = center_crop_boxes(sizes)
    for (h, w), box in zip(sizes.tolist(), boxes.tolist()):
        short = min(h, w)
        # Resize(256) scales the short side to 256, CenterCrop(224) keeps 224 of those, centred:
        # in stored pixels a square of 224/256 of the short side, its margins equal.
        kept = short * 224 / 256
        side = int(kept)
        assert box == [(w - side) // 2, (h - side) // 2, side, side], (h, w)
        assert 0 <= kept - side < 1 and abs(box[0] - (w - kept) / 2) <= 1 and abs(box[1] - (h - kept) / 2) <= 1
    assert boxes.dtype == torch.int32


def test_same_seed_same_batches_other_seed_other_views(imagenet_dir):
    first = [next(iter(_loader(imagenet_dir, seed=s))) for s in (3, 3, 4)]
    a, b, c = first
    assert a.images.shape == (8, 3, RES, RES)
    assert a.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)
    assert torch.equal(a.record.params["rrc.boxes"], b.record.params["rrc.boxes"])
    assert not torch.equal(a.indices, c.indices)
    # Same rows under another seed still get other boxes.
    boxes_c = dict(zip(c.indices.tolist(), c.record.params["rrc.boxes"].tolist()))
    shared = [i for i in a.indices.tolist() if i in boxes_c]
    boxes_a = dict(zip(a.indices.tolist(), a.record.params["rrc.boxes"].tolist()))
    assert all(boxes_a[i] != boxes_c[i] for i in shared)


def test_record_replays_to_the_same_pixels_and_resume_recomputes_nothing(imagenet_dir):
    loader = _loader(imagenet_dir, seed=7)
    batches = list(loader)
    assert len(batches) == len(loader) >= 3
    batch = batches[1]
    sizes = read_image_sizes(imagenet_dir, "train")[batch.indices.numpy()]
    boxes = batch.record.params["rrc.boxes"].numpy()
    assert (boxes[:, 0] + boxes[:, 2] <= sizes[:, 1]).all() and (boxes[:, 1] + boxes[:, 3] <= sizes[:, 0]).all()

    views = loader.decode_views(batch.indices, batch.record.params["rrc.boxes"])
    assert views.shape == (8, RES, RES, 3) and views.dtype == torch.uint8
    replayed = loader.augment.apply(views.permute(0, 3, 1, 2).float().div_(255), batch.record)
    replayed = (replayed - loader._mean) / loader._std
    assert torch.equal(replayed, batch.images)

    # Resume at batch 1 of epoch 0: the same batch, with nothing before it computed.
    fresh = _loader(imagenet_dir, seed=7)
    fresh.load_state_dict({"epoch": 0, "batch": 1})
    resumed = next(iter(fresh))
    assert torch.equal(resumed.images, batch.images)
    assert torch.equal(resumed.record.params["rrc.boxes"], batch.record.params["rrc.boxes"])


def test_a_row_drawn_twice_in_a_pass_records_the_box_it_was_decoded_with(imagenet_dir):
    from fasttarget.loader import _CROP_STREAM, seeded_generator
    from fasttarget.subsets import SubsetConfig

    # 6 rows streamed in batches of 8: the pass's one batch holds two rows twice.
    loader = _loader(imagenet_dir, augment="crop", stream=True, subset=SubsetConfig(ipc=1), seed=2)
    batch = next(iter(loader))
    rows = batch.indices.tolist()
    assert len(rows) == 8 and len(set(rows)) == 6
    sizes = torch.from_numpy(read_image_sizes(imagenet_dir, "train")[rows])
    drawn = loader._crop.plan(sizes, seeded_generator(_CROP_STREAM, 2, 0, 0))["boxes"]
    last = {row: i for i, row in enumerate(rows)}  # the table keeps a row's last box; both decode with it
    assert torch.equal(batch.record.params["rrc.boxes"], drawn[[last[row] for row in rows]])
    assert not torch.equal(drawn, drawn[[last[row] for row in rows]])
    views = loader.decode_views(batch.indices, batch.record.params["rrc.boxes"])
    assert torch.equal((views.permute(0, 3, 1, 2).float().div_(255) - loader._mean) / loader._std, batch.images)


def test_evaluation_streams_center_crops_of_every_test_image(imagenet_dir):
    from fasttarget.train import eval_loader_config

    loader = build_loader(eval_loader_config(imagenet_dir, torch.device("cpu"), batch_size=5, res=RES))
    assert isinstance(loader, FfcvLoader)
    batches = list(loader)
    indices = torch.cat([b.indices for b in batches])
    assert sorted(indices.tolist()) == list(range(2 * CLASSES))
    boxes = torch.cat([b.record.params["center.boxes"] for b in batches])
    sizes = torch.from_numpy(read_image_sizes(imagenet_dir, "test"))[indices]
    assert torch.equal(boxes, center_crop_boxes(sizes))
    assert all(b.images.shape[1:] == (3, RES, RES) for b in batches)


def test_crop_alone_is_the_decode_time_crop(imagenet_dir):
    loader = _loader(imagenet_dir, augment="crop")
    assert loader.augment.ops == ()
    batch = next(iter(loader))
    assert set(batch.record.params) == {"rrc.apply", "rrc.boxes"}


def test_res_on_fixed_size_data_must_match_its_size(user_error, sample_dir, tmp_path):
    user_error("--res other than a fixed-size dataset's size", "train", "--data", sample_dir, "--strategy", "A",
               "--res", "64", "--out", tmp_path / "run", "--device", "cpu",
               expect=("--res 64", "32x32", "drop --res"))


# ---------------------------------------------------------------- students A, B, C at --res 64


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def teacher(imagenet_dir, tmp_path_factory) -> Path:
    from fasttarget.models import CheckpointInfo, ModelConfig, build_classifier, save_classifier

    meta = DatasetMeta.load(imagenet_dir)
    torch.manual_seed(1)
    net = build_classifier(ModelConfig(width=0.25, num_classes=meta.num_classes, image_size=RES))
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    return save_classifier(path, net, CheckpointInfo(net.config, 0.1, meta.fingerprint, meta.mean, meta.std))


@pytest.fixture(scope="module")
def cache(imagenet_dir, teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "targets.h5"
    proc = subprocess.run([FASTTARGET, "cache", "build", "--data", imagenet_dir, "--teacher", teacher,
                           "--out", out, "--device", "cpu", "--batch-size", "8", "--res", str(RES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def _strategy_args(strategy: str, teacher: Path, cache: Path) -> list:
    return {"A": [], "B": ["--teacher", teacher], "C": ["--cache", cache]}[strategy]


# Slow: three processes per strategy, each compiling ffcv's pipeline (about 1-4 min a strategy on the loaded
# 2-core machine).
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["A", "B", "C"])
def test_student_trains_evaluates_and_resumes_after_sigkill(strategy, imagenet_dir, teacher, request, tmp_path):
    """``fasttarget train --strategy A|B|C --res 64 --width 0.25``: killed after its first checkpoint,
    resumed, it writes the metrics of an uninterrupted run."""
    extra = _strategy_args(strategy, teacher, request.getfixturevalue("cache") if strategy == "C" else None)
    args = ["train", "--data", imagenet_dir, "--strategy", strategy, *extra, "--steps", "6", "--eval-every", "2",
            "--checkpoint-every", "2", "--seed", "3", *QUICK]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(out: Path, *more) -> subprocess.Popen:
        return subprocess.Popen([FASTTARGET, *map(str, args), "--out", out, *more], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    killed, straight = tmp_path / "killed", tmp_path / "straight"
    proc, other = start(killed), start(straight)
    deadline = time.monotonic() + 600
    while not (killed / "metrics.jsonl").is_file() or len(_metrics(killed)) < 2:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final.json").exists()
    for p in (start(killed, "--resume"), other):
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert "test top-1" in out
    rows = _metrics(straight)
    assert [r["step"] for r in rows] == [2, 4, 6] and all(0 <= r["test_acc_h"] <= 1 for r in rows)
    assert _metrics(killed) == rows
    config = json.loads((straight / "config.json").read_text())
    assert config["res"] == RES


def test_narrow_net_at_64px_gives_a_result_or_one_line_refusal(imagenet_dir, tmp_path):
    """Width 0.125 at 64 px: torch 2.14 segfaults in channels_last convolutions there on CPU; the run
    must finish or refuse in one line, never crash."""
    proc = subprocess.run([FASTTARGET, "train", "--data", imagenet_dir, "--strategy", "A", "--steps", "2",
                           "--eval-every", "2", "--out", tmp_path / "run", *QUICK, "--width", "0.125"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode in (0, 2), f"crashed with {proc.returncode}: {proc.stderr[-2000:]}"
    if proc.returncode == 2:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "width" in lines[0], proc.stderr
    else:
        assert json.loads((tmp_path / "run" / "final.json").read_text())["step"] == 2
