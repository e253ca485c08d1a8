"""Per-image decode + crop + resize time of each way to cut a training view out of a stored JPEG.

The 334 real photos of ``../shared/data/imagenet-sample`` stored as an FFCV beton stores them
(``RGBImageField(write_mode='jpg', max_resolution=500, jpeg_quality=90)``: OpenCV INTER_AREA
down to max side 500, OpenCV JPEG quality 90), one box each drawn with torchvision's
``RandomResizedCrop.get_params`` (scale (0.08, 1), ratio (3/4, 4/3)) or the 224/256 center crop,
output 224. One thread; every approach runs over the same images and boxes, interleaved round by
round, median of rounds. Also the mean absolute error of each against the plain reference (PIL
full decode + crop + BILINEAR resize), in uint8 levels.

Approaches:

- ``kernel``: :func:`fasttarget.kernels.jpeg.decode_crop` (DCT scaling, crop_scanline, skip_scanlines,
  triangle resize in C);
- ``kernel, full scale``: the same without DCT scaling (only the rows and columns are cut);
- ``ffcv``: what FFCV's ``RandomResizedCropRGBImageDecoder`` runs: libffcv's ``imdecode``
  (tjDecompress2 full decode) + libffcv's ``resize_crop`` (OpenCV INTER_AREA);
- ``simplejpeg``: its DCT-scaled decode to the smallest size whose box still covers the output,
  then crop + ``cv2.resize`` INTER_AREA;
- ``pyturbojpeg``: TurboJPEG lossless crop to the MCU-aligned box, scaled decode of that smaller
  JPEG, crop + ``cv2.resize`` INTER_AREA;
- ``pil``: the reference itself.

Run: ``PYTHONPATH=src python scripts/jpeg_alternatives.py [--rounds 3] [--center]``.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from fasttarget.kernels.jpeg import decode_crop, decode_crop_reference

OUT = 224
SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-sample"


def stored_jpeg(path: str) -> np.ndarray:
    """The bytes FFCV's RGBImageField(write_mode='jpg', max_resolution=500, jpeg_quality=90) stores."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    h, w = rgb.shape[:2]
    ratio = 500 / max(h, w)
    if ratio < 1:
        rgb = cv2.resize(rgb, (int(w * ratio), int(h * ratio)), interpolation=cv2.INTER_AREA)
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return enc.reshape(-1), rgb.shape[0], rgb.shape[1]


def center_box(h: int, w: int) -> tuple[int, int, int, int]:
    c = int(224 / 256 * min(h, w))
    return (w - c) // 2, (h - c) // 2, c, c


def approaches():
    from ffcv.libffcv import imdecode, resize_crop
    import simplejpeg
    from turbojpeg import TurboJPEG

    tj = TurboJPEG()
    factors = sorted(Fraction(*f) for f in tj.scaling_factors if Fraction(*f) <= 1)
    scratch = np.empty(500 * 500 * 3, np.uint8)
    out = np.empty((OUT, OUT, 3), np.uint8)

    def kernel(d, h, w, box):
        return decode_crop(d, "jpg", h, w, box, (OUT, OUT), out=out)

    def kernel_full(d, h, w, box):
        return decode_crop(d, "jpg", h, w, box, (OUT, OUT), out=out, full_scale=True)

    def ffcv(d, h, w, box):
        x, y, bw, bh = box
        imdecode(d, scratch, h, w, h, w, 0, 0, 1, 1, False, False)
        resize_crop(scratch[: h * w * 3].reshape(h, w, 3), y, y + bh, x, x + bw, out)
        return out

    def resize(img, fx, fy, box):
        x, y, bw, bh = box
        x0, y0 = int(x * fx), int(y * fy)
        x1 = max(x0 + 1, min(img.shape[1], int(round((x + bw) * fx))))
        y1 = max(y0 + 1, min(img.shape[0], int(round((y + bh) * fy))))
        return cv2.resize(img[y0:y1, x0:x1], (OUT, OUT), interpolation=cv2.INTER_AREA)

    def simple(d, h, w, box):
        _, _, bw, bh = box
        img = simplejpeg.decode_jpeg(d.tobytes(), "rgb", min_height=-(-OUT * h // bh), min_width=-(-OUT * w // bw))
        return resize(img, img.shape[1] / w, img.shape[0] / h, box)

    def turbo(d, h, w, box):
        x, y, bw, bh = box
        f = next((f for f in factors if bw * f >= OUT and bh * f >= OUT), Fraction(1))
        mx, my = x // 16 * 16, y // 16 * 16  # MCU grid (4:2:0, OpenCV's default subsampling)
        cut = tj.crop(d.tobytes(), mx, my, min(w - mx, x + bw - mx), min(h - my, y + bh - my))
        img = tj.decode(cut, pixel_format=0, scaling_factor=(f.numerator, f.denominator))  # TJPF_RGB
        return resize(img, float(f), float(f), (x - mx, y - my, bw, bh))

    def pil(d, h, w, box):
        return decode_crop_reference(d, "jpg", h, w, box, (OUT, OUT))

    return {"kernel": kernel, "kernel, full scale": kernel_full, "ffcv": ffcv, "simplejpeg": simple,
            "pyturbojpeg": turbo, "pil": pil}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--center", action="store_true", help="center crops (ratio 224/256) instead of RRC")
    args = parser.parse_args()
    files = sorted(glob.glob(str(SAMPLE / "train" / "*" / "*")))
    if not files:
        raise SystemExit(f"no photos under {SAMPLE}")
    torch.manual_seed(0)
    samples = []
    for path in files:
        d, h, w = stored_jpeg(path)
        if args.center:
            box = center_box(h, w)
        else:
            i, j, bh, bw = RandomResizedCrop.get_params(torch.empty(1, h, w), (0.08, 1.0), (3 / 4, 4 / 3))
            box = (j, i, bw, bh)
        samples.append((d, h, w, box))
    ways = approaches()
    reference = [ways["pil"](*s).astype(np.int16) for s in samples]
    errors = {name: float(np.mean([np.abs(fn(*s).astype(np.int16) - r).mean() for s, r in zip(samples, reference)]))
              for name, fn in ways.items()}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            for s in samples:
                fn(*s)
            times[name].append((time.perf_counter() - t0) / len(samples))
    kind = "center 224/256" if args.center else "RRC (torchvision get_params)"
    print(f"{len(samples)} photos, max side 500, q90, {kind} -> {OUT}, 1 thread, median of {args.rounds} rounds")
    base = statistics.median(times["ffcv"])
    for name in ways:
        t = statistics.median(times[name])
        print(f"{name:20s} {t * 1e3:6.2f} ms/img  {1 / t:7.0f} img/s  {base / t:5.2f}x ffcv  "
              f"mean |err| vs PIL {errors[name]:.2f}")


if __name__ == "__main__":
    main()
