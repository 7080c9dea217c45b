"""The lite birds model as the function serves it, against a plain reference pipeline; and its speed
beside the float module's architecture.

    .venv/bin/python bench/lite_model.py [--model ../shared/models/aiy-birds-v1-lite.tflite] [--photos 40]

Agreement: stand-in photos (``standin.photos.photo_like``: the bench has no bird photos) at the
model's size and larger, decoded as the function decodes them (``function.core.images.decode`` at
the model's size, its contract's ``prepare``) and as a plain pipeline would (Pillow, bilinear resize,
raw pixels), both run on the same interpreter: top-1 agreement and score differences, in output
quantization steps. The same for the input the function fed this model before it read its
metadata ([0,1] floats quantized with the input's scale and zero point).

Speed: milliseconds per image of one single-threaded LiteRT call of one image (the serving
configuration), median and fastest of ``--calls``, the two models' calls interleaved, for the lite
model and for the stand-in MobileNet V2 float ``.tflite`` (the float module's architecture and size,
random weights; generated with TensorFlow).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from function.core import images  # noqa: E402
from function.model.litert import LiteRTModel  # noqa: E402
from standin import hubmodel, photos  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "aiy-birds-v1-lite.tflite"
SIZES = [(224, 224), (640, 480), (1200, 900), (480, 640), (2000, 1500)]


def agreement(model: LiteRTModel, count: int) -> dict[str, float]:
    spec = model.contract.input
    step = model.output.scale
    rows = {"at_size": [], "larger": []}
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        data = photos.photo_like(w, h, seed=100 + i)
        served = model.predict(images.decode(data, 64_000_000, (spec.width, spec.height))[None])[0]
        plain = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((spec.width, spec.height),
                                                                                Image.Resampling.BILINEAR), np.uint8)
        reference = model.run(plain[None])[0]
        # Before: [0,1] floats quantized with the input's scale and zero point (pixel 0 became 128).
        before = model.run(np.clip(np.round(plain / 255.0 / model.input.scale) + model.input.zero_point, 0, 255)
                           .astype(np.uint8)[None])[0]
        key = "at_size" if (w, h) == (spec.width, spec.height) else "larger"
        rows[key].append((served, reference, before))
    out: dict[str, float] = {}
    for key, found in rows.items():
        if not found:
            continue
        out[f"{key}_photos"] = len(found)
        out[f"{key}_top1_agree"] = sum(int(s.argmax() == r.argmax()) for s, r, _ in found) / len(found)
        out[f"{key}_max_diff_steps"] = max(float(np.abs(s - r).max()) for s, r, _ in found) / step
        out[f"{key}_before_top1_agree"] = sum(int(b.argmax() == r.argmax()) for _, r, b in found) / len(found)
        out[f"{key}_before_max_diff_steps"] = max(float(np.abs(b - r).max()) for _, r, b in found) / step
    return out


def per_image_ms(models: dict[str, LiteRTModel], calls: int) -> dict[str, tuple[float, float]]:
    """(median, fastest) ms of one call of one image per model, the models' calls interleaved so that
    the machine's other load falls on both alike."""
    pixels = {name: np.random.default_rng(0).integers(0, 256, (1, m.height, m.width, 3), dtype=np.uint8)
              for name, m in models.items()}
    for name, m in models.items():
        m.predict(pixels[name])
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(calls):
        for name, m in models.items():
            t = time.perf_counter()
            m.predict(pixels[name])
            times[name].append((time.perf_counter() - t) * 1000)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    lite = LiteRTModel(args.model)
    print("lite model contract:", lite.contract.to_dict())
    for key, value in agreement(lite, args.photos).items():
        print(f"  {key}: {value:.3g}")
    with tempfile.TemporaryDirectory() as tmp:
        float_model = LiteRTModel(hubmodel.mobilenet_tflite(Path(tmp) / "mobilenet.tflite"))
    timed = per_image_ms({"lite model (uint8)": lite, "float MobileNet V2 stand-in": float_model}, args.calls)
    for name, (median, fastest) in timed.items():
        print(f"{name}, ms per image: median {median:.1f}, fastest {fastest:.1f}")


if __name__ == "__main__":
    main()
