"""Embedded synthetic datasets: determinism, file formats, RLE == label map, difficulty."""
import filecmp
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile

from objguided_d2.data.datasets.synthetic import FAMILIES, generate_synthetic_dataset, render_sample

SMALL = dict(image_size=64, num_train=3, num_val=1, num_test=1)


def _all_files(root):
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files]
    return sorted(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_identical_files_different_seed_differs(tmp_path, family):
    a = generate_synthetic_dataset(family, str(tmp_path / "a"), seed=3, **SMALL)
    b = generate_synthetic_dataset(family, str(tmp_path / "b"), seed=3, **SMALL)
    c = generate_synthetic_dataset(family, str(tmp_path / "c"), seed=4, **SMALL)
    files = _all_files(tmp_path / "a")
    assert files == _all_files(tmp_path / "b")
    assert len([f for f in files if f.endswith(".png")]) == 5
    for f in files:
        assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False), f
    imgs_a = [cv2.imread(str(tmp_path / "a" / f), cv2.IMREAD_UNCHANGED) for f in files if f.endswith(".png")]
    imgs_c = [cv2.imread(str(tmp_path / "c" / f), cv2.IMREAD_UNCHANGED) for f in files if f.endswith(".png")]
    assert any(not np.array_equal(x, y) for x, y in zip(imgs_a, imgs_c))
    assert set(a) == {"train", "val", "test"} and all(os.path.isfile(p) for p in a.values())


def test_idempotent_and_regenerated_when_parameters_change(tmp_path):
    root = str(tmp_path / "ds")
    paths = generate_synthetic_dataset("nuclei", root, **SMALL)
    mtime = os.stat(paths["train"]).st_mtime_ns
    generate_synthetic_dataset("nuclei", root, **SMALL)
    assert os.stat(paths["train"]).st_mtime_ns == mtime  # reused, not rewritten
    generate_synthetic_dataset("nuclei", root, **{**SMALL, "num_train": 2})
    with open(paths["train"]) as f:
        assert len(json.load(f)["images"]) == 2
    with open(os.path.join(root, "manifest.json")) as f:
        assert json.load(f)["num"]["train"] == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_rle_masks_match_label_maps(tmp_path, family):
    root = tmp_path / "ds"
    paths = generate_synthetic_dataset(family, str(root), image_size=96, num_train=4, num_val=0, num_test=0, seed=1)
    with open(paths["train"]) as f:
        coco = json.load(f)
    assert coco["categories"][0]["id"] == 1
    assert json.load(open(paths["val"]))["images"] == []
    n_checked = 0
    for im in coco["images"]:
        img = cv2.imread(str(root / im["file_name"]), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.shape[:2] == (96, 96)
        assert img.ndim == (2 if family == "neural" else 3)
        stem = os.path.splitext(os.path.basename(im["file_name"]))[0]
        label = tifffile.imread(str(root / "train" / "labels" / f"{stem}.tif"))
        assert label.dtype == np.uint16
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        assert len(anns) == label.max() == len(np.unique(label)) - 1
        for k, a in enumerate(anns):
            m = mask_util.decode(a["segmentation"])
            np.testing.assert_array_equal(m.astype(bool), label == k + 1)
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert a["area"] == m.sum() and a["iscrowd"] == 0 and a["category_id"] == 1
            n_checked += 1
    assert n_checked > 0


def _touching_pairs(label):
    """Number of 4-adjacent pixel pairs that belong to two different objects."""
    n = 0
    for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
        n += int(np.sum((a > 0) & (b > 0) & (a != b)))
    return n


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_touching_or_overlapping_objects(family):
    labels = [render_sample(family, 128, 0, "train", i)[1] for i in range(12)]
    touching = [_touching_pairs(lab) > 0 for lab in labels]
    assert sum(touching) >= 6, touching


def test_neural_cells_have_thin_protrusions_and_nuclei_do_not():
    def thin_fraction(family):
        """Fraction of object pixels on a 1-px wide line (both horizontal or both vertical
        neighbours are not the same object)."""
        thin = total = 0
        for i in range(8):
            lab = np.pad(render_sample(family, 128, 0, "train", i)[1].astype(np.int32), 1)
            c = lab[1:-1, 1:-1]
            horiz = (lab[1:-1, :-2] != c) & (lab[1:-1, 2:] != c)
            vert = (lab[:-2, 1:-1] != c) & (lab[2:, 1:-1] != c)
            thin += int(np.sum((c > 0) & (horiz | vert)))
            total += int(np.sum(c > 0))
        return thin / max(total, 1)

    assert thin_fraction("neural") > 0.05
    assert thin_fraction("neural") > 2.5 * thin_fraction("nuclei")


def test_leaves_overlap_hides_part_of_older_leaves():
    # Occlusion splits some leaves (petiole hidden under a younger leaf) or the label map would
    # have only simple touching; at least one leaf in a few rosettes is split into several blobs.
    from scipy import ndimage

    split = 0
    for i in range(12):
        lab = render_sample("leaves", 128, 0, "train", i)[1]
        for k in range(1, lab.max() + 1):
            split += ndimage.label(lab == k)[1] > 1
    assert split >= 1


def test_some_images_have_no_object_and_sizes_vary():
    counts = [render_sample("nuclei", 48, 0, "train", i)[1].max() for i in range(150)]
    assert min(counts) == 0 and max(counts) > 20
    areas = []
    for i in range(10):
        lab = render_sample("nuclei", 128, 0, "train", i)[1]
        areas += list(np.bincount(lab.ravel())[1:])
    areas = [a for a in areas if a > 0]
    assert min(areas) < 20 and max(areas) > 300


def test_bad_arguments():
    with pytest.raises(ValueError, match="family"):
        render_sample("cats", 64, 0, "train", 0)
    with pytest.raises(ValueError, match="num_train"):
        generate_synthetic_dataset("nuclei", "/nonexistent/never", num_train=-1)


def test_join_diagonal_pieces_makes_thin_lines_4_connected():
    import cv2

    from objguided_d2.data.datasets.synthetic_shapes import join_diagonal_pieces

    label = np.zeros((20, 20), np.uint16)
    for i in range(15):
        label[2 + i, 3 + i] = 7  # a 1-px diagonal line: 15 pieces under 4-connectivity
    label[10, 2] = 3  # another object's pixel is never overwritten
    joined = join_diagonal_pieces(label)
    n4, _ = cv2.connectedComponents((joined == 7).astype(np.uint8), connectivity=4)
    assert n4 - 1 == 1
    assert (joined[label > 0] == label[label > 0]).all() and joined[10, 2] == 3
    assert set(np.unique(joined)) == {0, 3, 7}


def test_neural_cells_are_mostly_one_4_connected_piece():
    import cv2

    from objguided_d2.data.datasets.synthetic import render_sample

    fractions = []
    for i in range(4):
        _, label = render_sample("neural", 128, 0, "train", i)
        for k in set(np.unique(label).tolist()) - {0}:
            m = (label == k).astype(np.uint8)
            _, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=4)
            fractions.append(stats[1:, 4].max() / m.sum())
    # occlusion by neighbours may still cut a cell, but most of each cell is one 4-connected piece
    assert np.median(fractions) > 0.9


def _drawn_sides(family, size, min_object_size, n=6):
    """Box sides of the objects not cut by the image border, over n train images."""
    sides = []
    for i in range(n):
        _, label = render_sample(family, size, 0, "train", i, min_object_size)
        for k in np.unique(label)[1:]:
            ys, xs = np.nonzero(label == k)
            if xs.min() > 0 and ys.min() > 0 and xs.max() < size - 1 and ys.max() < size - 1:
                sides.append(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    return np.asarray(sides)


@pytest.mark.parametrize("family", FAMILIES)
def test_min_object_size_raises_the_smallest_objects_only(family):
    # 0 is the generator's own sizes, bit for bit.
    a, b = render_sample(family, 96, 0, "train", 2), render_sample(family, 96, 0, "train", 2, 0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    base, floored = _drawn_sides(family, 96, 0), _drawn_sides(family, 96, 16)
    assert np.percentile(floored, 10) > np.percentile(base, 10)
    assert np.percentile(floored, 10) >= 8  # touching neighbours may still hide part of an object
    # Thin structures keep their width: neural protrusions / leaf stalks stay 1-3 px.
    if family == "neural":
        _, label = render_sample(family, 96, 0, "train", 1, 16)
        opened = cv2.morphologyEx((label > 0).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        assert ((label > 0) & (opened == 0)).sum() > 0.05 * (label > 0).sum()


def test_min_object_size_is_part_of_the_dataset_identity(tmp_path):
    root = str(tmp_path / "d")
    generate_synthetic_dataset("nuclei", root, image_size=32, num_train=1, num_val=0, num_test=0)
    with open(os.path.join(root, "manifest.json")) as f:
        assert "min_object_size" not in json.load(f)  # caches from before the option stay valid
    generate_synthetic_dataset("nuclei", root, image_size=32, num_train=1, num_val=0, num_test=0, min_object_size=8)
    with open(os.path.join(root, "manifest.json")) as f:
        assert json.load(f)["min_object_size"] == 8
    with pytest.raises(ValueError, match="min_object_size"):
        generate_synthetic_dataset("nuclei", root, image_size=32, min_object_size=-1)
