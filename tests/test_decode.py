"""``fasttarget.decode``: the FFCV decoder that cuts planned boxes, through a real ffcv ``Loader``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fasttarget.errors import UserError

SIZES = [(120, 160), (90, 60), (200, 150), (64, 64), (75, 211), (130, 130), (48, 100), (160, 90)] * 3


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    """A beton of photo-like images of varied sizes, about half JPEG and half raw (FFCV's
    'proportion' mode), the label of each row its row number."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from test_jpeg import photo_like

    rng = np.random.default_rng(0)
    images = [photo_like(rng, h, w) for h, w in SIZES]

    class Rows:
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return images[i], i

    np.random.seed(0)  # FFCV's proportion mode draws jpg-or-raw from numpy's global RNG
    path = tmp_path_factory.mktemp("decode") / "train.beton"
    fields = {"image": RGBImageField(write_mode="proportion", compress_probability=0.5, jpeg_quality=90),
              "label": IntField()}
    DatasetWriter(str(path), fields, num_workers=1).from_indexed_dataset(Rows())
    return path


def load(path, boxes, size=(32, 48), batch_size=5):
    """Every row once, through a Loader with the planned decoder: {row: image}."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption

    from fasttarget.decode import PlannedCropDecoder

    decoder = PlannedCropDecoder(boxes, size)
    loader = Loader(str(path), batch_size=batch_size, order=OrderOption.RANDOM, num_workers=2, seed=3, drop_last=False,
                    pipelines={"image": [decoder], "label": [IntDecoder()]})
    out = {}
    for images, labels in loader:
        for image, label in zip(images, labels.reshape(-1)):
            out[int(label)] = np.array(image)
    return out, decoder


def stored(path):
    """Each row's stored bytes, mode, height and width, read with FFCV's own reader."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    meta = reader.metadata["f0"]
    data = np.fromfile(str(path), np.uint8)
    alloc = {int(ptr): (int(size)) for ptr, size in zip(reader.alloc_table["ptr"], reader.alloc_table["size"])}
    return [(data[int(m["data_ptr"]) : int(m["data_ptr"]) + alloc[int(m["data_ptr"])]],
             "jpg" if m["mode"] == 0 else "raw", int(m["height"]), int(m["width"])) for m in meta]


def random_boxes(rng, sizes):
    boxes = np.zeros((len(sizes), 4), np.int32)
    for i, (h, w) in enumerate(sizes):
        bw, bh = int(rng.integers(1, w + 1)), int(rng.integers(1, h + 1))
        boxes[i] = rng.integers(0, w - bw + 1), rng.integers(0, h - bh + 1), bw, bh
    return boxes


def test_stored_sizes_reads_every_rows_size(beton):
    from fasttarget.decode import stored_sizes

    assert stored_sizes(beton).tolist() == [list(s) for s in SIZES]


def test_loader_output_is_the_kernel_applied_sample_by_sample(beton):
    from fasttarget.decode import stored_sizes
    from fasttarget.kernels.jpeg import decode_crop

    boxes = random_boxes(np.random.default_rng(1), stored_sizes(beton))
    got, decoder = load(beton, boxes)
    samples = stored(beton)
    assert {mode for _, mode, _, _ in samples} == {"jpg", "raw"}
    assert sorted(got) == list(range(len(SIZES)))
    for row, (data, mode, h, w) in enumerate(samples):
        assert np.array_equal(got[row], decode_crop(data, mode, h, w, boxes[row], (32, 48))), row
    decoder.check()


def test_the_table_is_read_when_decoding_so_a_refill_changes_the_crops(beton):
    from fasttarget.augment import center_crop_boxes
    from fasttarget.decode import PlannedCropDecoder, stored_sizes

    sizes = stored_sizes(beton)
    boxes = center_crop_boxes(torch.from_numpy(sizes)).numpy()
    first, _ = load(beton, boxes)
    boxes[:] = random_boxes(np.random.default_rng(2), sizes)  # the loader refills in place
    second, _ = load(beton, boxes)
    again, _ = load(beton, boxes.copy())
    assert all(np.array_equal(second[r], again[r]) for r in second)
    assert sum(not np.array_equal(first[r], second[r]) for r in first) >= len(first) - 1
    with pytest.raises(UserError, match="C-contiguous writable int32"):
        PlannedCropDecoder(boxes.astype(np.int64), (8, 8))


def test_bad_rows_come_out_black_and_are_named_never_garbage(beton):
    from fasttarget.augment import center_crop_boxes
    from fasttarget.decode import stored_sizes

    sizes = stored_sizes(beton)
    boxes = center_crop_boxes(torch.from_numpy(sizes)).numpy()
    boxes[3] = (0, 0, 0, 0)  # a row the planner did not fill
    boxes[5] = (10_000, 10_000, 10, 10)  # entirely outside the image
    boxes[6] = (-50, -50, 10_000, 10_000)  # larger than the image: clipped to all of it
    got, decoder = load(beton, boxes)
    assert not got[3].any() and not got[5].any()
    assert got[6].any() and got[4].any()
    assert decoder.failed_rows().tolist() == [3, 5]
    with pytest.raises(UserError, match=r"2 samples failed to decode \(rows 3, 5; first: empty or invalid box\)"):
        decoder.check()


def test_a_table_shorter_than_the_beton_is_refused(beton):
    with pytest.raises(UserError, match=f"boxes has 3 rows but the beton has {len(SIZES)}"):
        load(beton, np.zeros((3, 4), np.int32))


def test_stored_sizes_names_a_missing_file_and_a_missing_field(beton, tmp_path):
    from fasttarget.decode import stored_sizes

    with pytest.raises(UserError, match="no beton at"):
        stored_sizes(tmp_path / "nope.beton")
    with pytest.raises(UserError, match="no RGBImageField named 'label'"):
        stored_sizes(beton, field="label")


def test_center_crop_boxes_are_ffcvs_center_crop_decoder_boxes():
    from ffcv.fields.rgb_image import get_center_crop

    from fasttarget.augment import center_crop_boxes

    sizes = [(h, w) for h in (1, 2, 3, 63, 64, 255, 257, 375, 500, 999) for w in (1, 5, 64, 99, 333, 500, 1001)]
    boxes = center_crop_boxes(torch.tensor(sizes)).tolist()
    for (h, w), (x0, y0, cw, ch) in zip(sizes, boxes):
        assert get_center_crop(h, w, None, 224 / 256) == (y0, x0, ch, cw), (h, w)
