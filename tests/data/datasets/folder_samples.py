"""Small datasets on disk for the format tests (imported by the test modules next to it)."""
import json
import os

import cv2
import numpy as np
import tifffile


def label_map(h=20, w=30, ids=((1, (2, 2, 8, 8)),)):
    lab = np.zeros((h, w), np.int64)
    for i, (y0, x0, y1, x1) in ids:
        lab[y0:y1, x0:x1] = i
    return lab


def load_json(path):
    with open(path) as f:
        return json.load(f)


def all_images(ds):
    out = {}
    for s, p in ds.json_files.items():
        c = load_json(p)
        for im in c["images"]:
            out[os.path.splitext(os.path.basename(im["file_name"]))[0]] = (
                s, im, [a for a in c["annotations"] if a["image_id"] == im["id"]])
    return out


def make_labelfolder(root, n=5):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"s{i}.png"), rng.integers(0, 255, (20, 30), dtype=np.uint8))
        tifffile.imwrite(str(root / "labels" / f"s{i}.tif"), label_map().astype(np.uint16))


def files_under(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
