"""The paper's training augmentation: a random square crop that may reach outside the image.

``RandomSquareCrop`` draws a square of side ``max(H, W) * s`` (``s`` uniform from a list,
default 0.6, 0.7, ..., 1.3) around a random centre; the part outside the image is zero padded.
The trainer then resizes it to ``INPUT.TRAIN_SIZE`` (a fixed square). The centre's x range comes
from the image width and its y range from the height (the authors' code swaps them, which is
wrong for non-square images).

``RandomNativeCrop`` (beyond the paper, ``INPUT.NATIVE_CROP_SIZE``) takes a fixed-size square at
native scale instead, with no resize: cheap iterations on large images without shrinking objects.
"""
from typing import List, Sequence

import numpy as np
from detectron2.data.transforms import Augmentation, Transform

__all__ = ["SquareCropPadTransform", "RandomSquareCrop", "RandomNativeCrop", "clip_polygon_to_rect"]


def clip_polygon_to_rect(poly: np.ndarray, x1: float, y1: float) -> np.ndarray:
    """Clip a polygon (K, 2) to the rectangle [0, x1] x [0, y1] (Sutherland-Hodgman).

    Works for concave polygons too (the result may have zero-width bridges along the border,
    which rasterise to nothing). Returns (K', 2); K' < 3 means nothing is left.
    """
    pts = [tuple(p) for p in np.asarray(poly, dtype=np.float64).reshape(-1, 2)]
    # Each edge: (inside test, intersection of segment p-q with the edge line).
    edges = [
        (lambda p: p[0] >= 0, lambda p, q: (0.0, p[1] + (q[1] - p[1]) * (0 - p[0]) / (q[0] - p[0]))),
        (lambda p: p[0] <= x1, lambda p, q: (x1, p[1] + (q[1] - p[1]) * (x1 - p[0]) / (q[0] - p[0]))),
        (lambda p: p[1] >= 0, lambda p, q: (p[0] + (q[0] - p[0]) * (0 - p[1]) / (q[1] - p[1]), 0.0)),
        (lambda p: p[1] <= y1, lambda p, q: (p[0] + (q[0] - p[0]) * (y1 - p[1]) / (q[1] - p[1]), y1)),
    ]
    for inside, cross in edges:
        if not pts:
            break
        out = []
        prev = pts[-1]
        for cur in pts:
            if inside(cur):
                if not inside(prev):
                    out.append(cross(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cross(prev, cur))
            prev = cur
        pts = out
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


class SquareCropPadTransform(Transform):
    """Take the square ``[x0, x0 + side) x [y0, y0 + side)`` of an image, which may extend past
    its borders; pixels outside the image become ``pad_value`` (``seg_pad_value`` for masks).

    Image (H, W[, C]) -> (side, side[, C]); coordinates shift by (-x0, -y0); polygons are
    clipped to the square.
    """

    def __init__(self, x0: int, y0: int, side: int, orig_w: int, orig_h: int, pad_value: float = 0, seg_pad_value: int = 0):
        super().__init__()
        if side <= 0:
            raise ValueError(f"square crop side must be positive, got {side}")
        self._set_attributes(locals())

    def _crop_pad(self, img: np.ndarray, fill) -> np.ndarray:
        h, w = img.shape[:2]
        if (h, w) != (self.orig_h, self.orig_w):
            raise ValueError(f"SquareCropPadTransform built for {self.orig_w}x{self.orig_h} got a {w}x{h} image")
        out = np.full((self.side, self.side) + img.shape[2:], fill, dtype=img.dtype)
        sx0, sy0 = max(0, self.x0), max(0, self.y0)
        sx1, sy1 = min(w, self.x0 + self.side), min(h, self.y0 + self.side)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - self.y0 : sy1 - self.y0, sx0 - self.x0 : sx1 - self.x0] = img[sy0:sy1, sx0:sx1]
        return out

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._crop_pad(img, self.pad_value)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._crop_pad(segmentation, self.seg_pad_value)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64).copy()
        coords[:, 0] -= self.x0
        coords[:, 1] -= self.y0
        return coords

    def apply_polygons(self, polygons: List[np.ndarray]) -> List[np.ndarray]:
        out = []
        for p in polygons:
            c = clip_polygon_to_rect(self.apply_coords(np.asarray(p).reshape(-1, 2)), self.side, self.side)
            if len(c) >= 3:
                out.append(c)
        return out


class RandomSquareCrop(Augmentation):
    """Random square crop of side ``max(H, W) * s`` around a random centre, zero padded.

    The centre is uniform in ``[m W, (1 - m) W) x [m H, (1 - m) H)`` with ``m = center_margin``
    (0.25 by default, which keeps at least a quarter-side of image in the crop, like CenterNet's
    border of 128 px on 512 px images); ``m = 0`` allows any centre inside the image.
    """

    def __init__(self, scales: Sequence[float] = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3), center_margin: float = 0.25,
                 pad_value: float = 0):
        super().__init__()
        scales = tuple(float(s) for s in scales)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"RandomSquareCrop scales must be positive numbers, got {scales}")
        if not 0 <= center_margin < 0.5:
            raise ValueError(f"center_margin must be in [0, 0.5), got {center_margin}")
        self._init(locals())
        self.scales = scales

    def get_transform(self, image: np.ndarray) -> SquareCropPadTransform:
        h, w = image.shape[:2]
        s = self.scales[np.random.randint(len(self.scales))]
        side = max(1, int(round(max(h, w) * s)))
        m = self.center_margin
        cx = np.random.uniform(m * w, (1 - m) * w)  # x from the width ...
        cy = np.random.uniform(m * h, (1 - m) * h)  # ... and y from the height (not swapped)
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        return SquareCropPadTransform(x0, y0, side, w, h, pad_value=self.pad_value)


class RandomNativeCrop(Augmentation):
    """A ``size`` x ``size`` square at a uniformly random position, at native scale (no resize).

    The square lies inside the image wherever the image is at least ``size`` along that axis;
    along a shorter axis it is placed at a random offset around the image and zero padded.
    """

    def __init__(self, size: int, pad_value: float = 0):
        super().__init__()
        if int(size) <= 0:
            raise ValueError(f"RandomNativeCrop size must be a positive number of pixels, got {size}")
        self.size = int(size)
        self.pad_value = pad_value

    def get_transform(self, image: np.ndarray) -> SquareCropPadTransform:
        h, w = image.shape[:2]
        # x0 in [0, W - size] when the image is wider than the crop, else in [W - size, 0].
        x0 = int(np.random.randint(min(0, w - self.size), max(0, w - self.size) + 1))
        y0 = int(np.random.randint(min(0, h - self.size), max(0, h - self.size) + 1))
        return SquareCropPadTransform(x0, y0, self.size, w, h, pad_value=self.pad_value)
