"""The task's original algorithm, written the naive way: the baseline the cold CLI is compared with.

    MODEL_URL=... LABELS_URL=... python bench/naive.py URL [URL ...]

For each photo, one after another: build the hub Keras layer again (``hub.KerasLayer`` inside a
``tf_keras.Sequential``, as the TF Hub tutorials do; tensorflow_hub's cache under
``TFHUB_CACHE_DIR`` spares the second download, not the load), fetch and parse the label map
again, fetch the photo with urllib, decode it in full (no JPEG draft mode), resize to 224x224,
scale to [0,1], run a batch of one with ``model.predict`` and sort all 965 scores.

Nothing here is meant to be fast; it is what the function's optimisations are measured against.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
import urllib.request

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras
from PIL import Image

MODEL_URL = os.environ.get("MODEL_URL", "https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1")
LABELS_URL = os.environ.get("LABELS_URL",
                            "https://www.gstatic.com/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv")
IMAGE_SIZE = 224


def load_labels(url: str) -> dict[int, str]:
    with urllib.request.urlopen(url, timeout=60) as response:
        text = response.read().decode("utf-8")
    return {int(row["id"]): row["name"] for row in csv.DictReader(io.StringIO(text))}


def classify(url: str, top_k: int = 3) -> list[tuple[str, float]]:
    model = tf_keras.Sequential([
        hub.KerasLayer(MODEL_URL, signature="default", output_key="default",
                       input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
    ])
    labels = load_labels(LABELS_URL)
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    image = Image.open(io.BytesIO(data)).convert("RGB")  # the full-size decode
    image = image.resize((IMAGE_SIZE, IMAGE_SIZE))
    batch = np.asarray(image, dtype=np.float32)[np.newaxis, ...] / 255.0
    scores = model.predict(batch, verbose=0)[0]
    order = np.argsort(scores)[::-1]  # all 965 classes
    return [(labels.get(int(i), str(int(i))), float(scores[i])) for i in order[:top_k]]


def main(urls: list[str]) -> int:
    tf.get_logger().setLevel("ERROR")
    timings = []
    for url in urls:
        started = time.perf_counter()
        top = classify(url)
        timings.append(round((time.perf_counter() - started) * 1000, 1))
        print(json.dumps({"url": url, "top": top, "ms": timings[-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
