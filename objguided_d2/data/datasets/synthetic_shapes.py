"""Drawing the synthetic families' images and instance label maps (no files, no datasets).

Each ``render_<family>(rng, size, min_size)`` returns an (S, S) or (S, S, 3) uint8 image and an
(S, S) uint16 label map. :mod:`.synthetic` describes what each family imitates, seeds the
renderers and writes the datasets.
"""
from typing import List, Tuple

import cv2
import numpy as np

__all__ = ["render_nuclei", "render_neural", "render_leaves", "join_diagonal_pieces"]

_EMPTY_PROB = 0.04  # probability that an image holds no object at all


# ----------------------------------------------------------------------------- common helpers
def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std noise with structures of about ``scale`` pixels, (h, w) float32."""
    gh, gw = max(2, int(np.ceil(h / scale)) + 1), max(2, int(np.ceil(w / scale)) + 1)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (big - big.mean()) / (big.std() + 1e-6)


def _illumination(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Uneven illumination: a linear ramp plus a low-frequency bump field, ~[0.6, 1.3]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(-0.25, 0.25, size=2)
    ramp = a[0] * (xx / w - 0.5) + a[1] * (yy / h - 0.5)
    bumps = rng.uniform(0.03, 0.12) * _smooth_noise(rng, h, w, max(h, w) / 2.5)
    return 1.0 + ramp + bumps


def _finish(rng: np.random.Generator, img: np.ndarray, blur: Tuple[float, float], noise: Tuple[float, float]) -> np.ndarray:
    """Optical blur + sensor noise (Gaussian and signal-dependent), then to uint8."""
    sigma = rng.uniform(*blur)
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)
    s = rng.uniform(*noise)
    n = rng.standard_normal(img.shape).astype(np.float32)
    img = img + n * (s * (0.6 + 0.4 * np.sqrt(np.clip(img, 0, None))))
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _finalise_labels(label: np.ndarray, min_area: int) -> np.ndarray:
    """Drop objects whose visible part is tiny and renumber the rest 1..K (uint16)."""
    ids, inv, counts = np.unique(label, return_inverse=True, return_counts=True)
    keep = (ids > 0) & (counts >= min_area)
    new_ids = np.zeros(len(ids), dtype=np.uint16)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint16)
    return new_ids[inv.reshape(label.shape)]


def _wobbly_polygon(rng, cx, cy, a, b, angle, n=48, wobble=0.08) -> np.ndarray:
    """Ellipse (semi-axes a, b, rotated by ``angle``) with a random low-order radial wobble."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3, 4, 5):
        r += rng.uniform(0, wobble) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    x, y = a * r * np.cos(t), b * r * np.sin(t)
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


def _fill(canvas_shape, pts: np.ndarray) -> np.ndarray:
    m = np.zeros(canvas_shape, np.uint8)
    # Sub-pixel polygon vertices (shift=4) keep tiny objects round instead of blocky.
    cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return m


# ----------------------------------------------------------------------------- nuclei
def render_nuclei(rng: np.random.Generator, size: int, min_size: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    h = w = size
    fluorescent = rng.random() < 0.6
    n = 0
    if rng.random() >= _EMPTY_PROB:
        r_mean = size * rng.uniform(0.015, 0.07)
        coverage = rng.uniform(0.08, 0.45)
        n = int(np.clip(rng.poisson(coverage * h * w / (np.pi * r_mean**2)), 1, 160))
    centers: List[Tuple[float, float, float]] = []
    best = np.full((h, w), np.inf, np.float32)  # smallest normalised radius seen per pixel
    label = np.zeros((h, w), np.int32)
    dist = np.zeros((h, w), np.float32)
    intens = rng.uniform(0.3, 1.0, size=max(n, 1)).astype(np.float32)
    for i in range(n):
        r = float(np.clip(r_mean * rng.lognormal(0, 0.35), max(2.0, min_size / 2), max(size * 0.12, min_size / 2)))
        if centers and rng.random() < 0.65:
            # Clustered: put it against an existing nucleus (overlap of the ellipses -> a
            # shared, straight-ish boundary after the nearest-centre assignment below).
            px, py, pr = centers[rng.integers(len(centers))]
            ang = rng.uniform(0, 2 * np.pi)
            d = (pr + r) * rng.uniform(0.7, 1.0)
            cx, cy = px + d * np.cos(ang), py + d * np.sin(ang)
        else:
            cx, cy = rng.uniform(-r, w + r), rng.uniform(-r, h + r)
        centers.append((cx, cy, r))
        a, b = r, r * rng.uniform(0.6, 1.0)
        ang = rng.uniform(0, np.pi)
        x0, x1 = int(max(0, np.floor(cx - 1.4 * r))), int(min(w, np.ceil(cx + 1.4 * r) + 1))
        y0, y1 = int(max(0, np.floor(cy - 1.4 * r))), int(min(h, np.ceil(cy + 1.4 * r) + 1))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx - cx, yy - cy
        ca, sa = np.cos(ang), np.sin(ang)
        u, v = (ca * dx + sa * dy) / a, (-sa * dx + ca * dy) / b
        rho = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u)
        wob = np.ones_like(theta)
        for k in (2, 3, 4):
            wob += rng.uniform(0, 0.07) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        d = rho / wob
        sub_best = best[y0:y1, x0:x1]
        win = (d < 1.0) & (d < sub_best)
        sub_best[win] = d[win]
        label[y0:y1, x0:x1][win] = i + 1
        dist[y0:y1, x0:x1][win] = d[win]
    label = _finalise_labels(label, min_area=4)

    # Signal: per-nucleus brightness, dimmer rim (so touching nuclei show only a faint dip),
    # chromatin texture.
    inside = label > 0
    owner = np.zeros((h, w), np.int64)
    owner[inside] = np.minimum(label[inside], max(n, 1)) - 1
    sig = np.zeros((h, w), np.float32)
    tex = _smooth_noise(rng, h, w, rng.uniform(1.5, 4.0))
    sig[inside] = intens[owner[inside]] * (0.7 + 0.3 * (1 - dist[inside] ** 2)) * (1 + 0.15 * tex[inside])
    sig = cv2.GaussianBlur(sig, (0, 0), 0.7)
    illum = _illumination(rng, h, w)
    if fluorescent:
        bg = rng.uniform(0.03, 0.18)
        gray = (bg + rng.uniform(0.4, 0.8) * sig + 0.02 * _smooth_noise(rng, h, w, 8)) * illum
        tint = np.array([1, 1, 1], np.float32) if rng.random() < 0.6 else rng.uniform(0.2, 1.0, 3).astype(np.float32)
        tint /= tint.max()
        img = gray[..., None] * tint[None, None]
    else:
        # Brightfield / H&E: pink tissue background absorbing less than the purple nuclei.
        bg_col = np.array([0.92, 0.78, 0.86], np.float32) * rng.uniform(0.85, 1.0, 3).astype(np.float32)
        nuc_col = np.array([0.40, 0.25, 0.55], np.float32) * rng.uniform(0.7, 1.1, 3).astype(np.float32)
        tissue = 0.06 * _smooth_noise(rng, h, w, rng.uniform(3, 10))
        alpha = np.clip(sig * rng.uniform(0.8, 1.1), 0, 1)[..., None]
        img = (bg_col * (1 + tissue[..., None])) * (1 - alpha) + nuc_col * alpha
        img = img * illum[..., None]
    img = _finish(rng, img.astype(np.float32), blur=(0.4, 1.3), noise=(0.01, 0.05))
    return img, label


# ----------------------------------------------------------------------------- neural
def _draw_branch(rng, mask, intensity, x, y, theta, length, width, step, depth, inten, tips):
    """Grow one protrusion as a persistent random walk; draws into ``mask`` and ``intensity``."""
    n_steps = max(1, int(length / step))
    for s in range(n_steps):
        theta += rng.normal(0, 0.18)
        nx, ny = x + step * np.cos(theta), y + step * np.sin(theta)
        wdt = max(1, int(round(width * (1 - 0.75 * s / n_steps))))  # taper towards the tip
        p0, p1 = (int(round(x * 16)), int(round(y * 16))), (int(round(nx * 16)), int(round(ny * 16)))
        # LINE_4: a 1-px protrusion drawn 8-connected falls apart into diagonal pieces under the
        # 4-connectivity that defines an object's largest component (its training box).
        cv2.line(mask, p0, p1, 1, thickness=wdt, lineType=cv2.LINE_4, shift=4)
        cv2.line(intensity, p0, p1, float(inten * (1 - 0.4 * s / n_steps)), thickness=wdt, lineType=cv2.LINE_4, shift=4)
        x, y = nx, ny
        if depth < 2 and s > 2 and rng.random() < 0.04:
            sign = 1 if rng.random() < 0.5 else -1
            _draw_branch(rng, mask, intensity, x, y, theta + sign * rng.uniform(0.4, 1.1),
                         (n_steps - s) * step * rng.uniform(0.3, 0.8), max(1.0, width * 0.6), step,
                         depth + 1, inten * 0.9, tips)
    tips.append((x, y, theta))


def render_neural(rng: np.random.Generator, size: int, min_size: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    h = w = size
    n = 0 if rng.random() < _EMPTY_PROB else int(rng.integers(2, 15))
    soma: List[Tuple[float, float, float]] = []
    for i in range(n):
        rs = max(size * rng.uniform(0.018, 0.05), min_size / 2)
        if soma and rng.random() < 0.5:
            px, py, pr = soma[rng.integers(len(soma))]
            ang, d = rng.uniform(0, 2 * np.pi), (pr + rs) * rng.uniform(1.2, 4.0)
            cx, cy = px + d * np.cos(ang), py + d * np.sin(ang)
        else:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        soma.append((cx, cy, rs))

    label = np.zeros((h, w), np.int32)
    sig = np.zeros((h, w), np.float32)
    for i, (cx, cy, rs) in enumerate(soma):
        m = np.zeros((h, w), np.uint8)
        inten_map = np.zeros((h, w), np.float32)
        bright = rng.uniform(0.45, 1.0)
        body = _fill((h, w), _wobbly_polygon(rng, cx, cy, rs, rs * rng.uniform(0.55, 1.0), rng.uniform(0, np.pi), wobble=0.15))
        m |= body
        inten_map[body > 0] = bright
        # Protrusions are dim (low contrast) relative to the soma.
        p_int = bright * rng.uniform(0.3, 0.6)
        tips: List[Tuple[float, float, float]] = []
        for _ in range(int(rng.integers(1, 7))):
            theta = rng.uniform(0, 2 * np.pi)
            length = rs * rng.uniform(1.5, 7.0)
            others = [(ox, oy) for j, (ox, oy, _r) in enumerate(soma) if j != i]
            if others and rng.random() < 0.4:
                # Grow towards the nearest neighbour so protrusions touch / cross it.
                d2 = [((ox - cx) ** 2 + (oy - cy) ** 2, ox, oy) for ox, oy in others]
                dd, ox, oy = min(d2)
                theta = np.arctan2(oy - cy, ox - cx) + rng.normal(0, 0.15)
                length = np.sqrt(dd) * rng.uniform(0.6, 1.05)
            x, y = cx + 0.8 * rs * np.cos(theta), cy + 0.8 * rs * np.sin(theta)
            _draw_branch(rng, m, inten_map, x, y, theta, length, rng.uniform(1.0, 3.5), 2.0, 0, p_int, tips)
        for tx, ty, tth in tips:
            if rng.random() < 0.25:  # lamellipodium: thin fan at a growth cone
                r = rng.uniform(2.0, 6.0)
                fan = _fill((h, w), _wobbly_polygon(rng, tx + 0.5 * r * np.cos(tth), ty + 0.5 * r * np.sin(tth),
                                                    r, r * rng.uniform(0.3, 0.7), tth + np.pi / 2, wobble=0.2))
                m |= fan
                inten_map[(fan > 0) & (inten_map == 0)] = p_int * 0.8
        on = m > 0
        label[on] = i + 1  # later cells lie on top
        sig[on] = np.maximum(sig[on], inten_map[on])
    label = _finalise_labels(label, min_area=6)

    # Unlabelled debris: small dim blobs that look like tiny cells (false-positive bait).
    for _ in range(int(rng.integers(0, 6))):
        r = rng.uniform(1.0, 3.0)
        blob = _fill((h, w), _wobbly_polygon(rng, rng.uniform(0, w), rng.uniform(0, h), r, r, 0.0, n=16))
        sig[(blob > 0) & (label == 0)] = rng.uniform(0.1, 0.35)
    tex = _smooth_noise(rng, h, w, rng.uniform(2, 5))
    sig = sig * (1 + 0.2 * tex)
    bg = rng.uniform(0.12, 0.3)
    img = (bg + rng.uniform(0.35, 0.6) * sig + 0.03 * _smooth_noise(rng, h, w, 12)) * _illumination(rng, h, w)
    img = _finish(rng, img.astype(np.float32), blur=(0.5, 1.1), noise=(0.02, 0.06))
    return img, label


# ----------------------------------------------------------------------------- leaves
def _bezier(p0, p1, p2, n):
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def render_leaves(rng: np.random.Generator, size: int, min_size: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    h = w = size
    # Soil: brown with granules; some trays carry green moss specks (unlabelled distractors).
    soil = np.array([0.36, 0.26, 0.18], np.float32) * rng.uniform(0.7, 1.2, 3).astype(np.float32)
    gran = 0.12 * _smooth_noise(rng, h, w, 1.5) + 0.1 * _smooth_noise(rng, h, w, 6)
    img = soil[None, None] * (1 + gran[..., None])
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(3, 25))):
            r = rng.uniform(0.8, 3.0)
            blob = _fill((h, w), _wobbly_polygon(rng, rng.uniform(0, w), rng.uniform(0, h), r, r * 0.7, rng.uniform(0, np.pi), n=16))
            img[blob > 0] = np.array([0.25, 0.45, 0.15], np.float32) * rng.uniform(0.6, 1.1)

    label = np.zeros((h, w), np.int32)
    n = 0 if rng.random() < _EMPTY_PROB else int(rng.integers(3, 23))
    cx, cy = w / 2 + rng.normal(0, 0.07 * w), h / 2 + rng.normal(0, 0.07 * h)
    R = size * rng.uniform(0.12, 0.45)
    plant_col = np.array([rng.uniform(0.15, 0.3), rng.uniform(0.42, 0.62), rng.uniform(0.08, 0.2)], np.float32)
    golden = np.deg2rad(137.5)
    phase = rng.uniform(0, 2 * np.pi)
    for k in range(n):  # k = 0 is the oldest (largest, outermost, painted first = bottom)
        maturity = (1.0 - 0.85 * k / max(n, 1)) * rng.uniform(0.75, 1.1)
        total = max(3.0, R * maturity, float(min_size))
        theta = phase + k * golden + rng.normal(0, 0.2)
        frac = rng.uniform(0.25, 0.5) if total > 10 else rng.uniform(0.0, 0.2)
        lp, lb = frac * total, (1 - frac) * total
        wb = lb * rng.uniform(0.55, 0.95)
        direction = np.array([np.cos(theta), np.sin(theta)])
        normal = np.array([-direction[1], direction[0]])
        start = np.array([cx, cy]) + normal * rng.normal(0, 1.0)
        base = start + direction * lp + normal * rng.uniform(-0.15, 0.15) * lp
        mid = (start + base) / 2 + normal * rng.uniform(-0.12, 0.12) * lp
        m = np.zeros((h, w), np.uint8)
        if lp >= 2:
            stalk = _bezier(start, mid, base, max(4, int(lp / 2)))
            pw = max(1, int(round(wb * rng.uniform(0.05, 0.1))))  # petiole: 1-3 px wide
            cv2.polylines(m, [np.round(stalk * 16).astype(np.int32)], False, 1, thickness=pw, lineType=cv2.LINE_4, shift=4)
        # Blade: teardrop along an axis that bends slightly, widest ~40 % from the base.
        axis_dir = base - mid if lp >= 2 else direction
        ang = np.arctan2(axis_dir[1], axis_dir[0]) + rng.normal(0, 0.1)
        t = np.linspace(0, 1, 40)
        half = 0.5 * wb * np.sin(np.pi * t**0.75) ** 0.9
        bend = rng.uniform(-0.1, 0.1) * lb * t**2
        u = np.concatenate([t * lb, (t * lb)[::-1]])
        v = np.concatenate([half + bend, (-half + bend)[::-1]])
        ca, sa = np.cos(ang), np.sin(ang)
        poly = np.stack([base[0] + ca * u - sa * v, base[1] + sa * u + ca * v], axis=1)
        blade = _fill((h, w), poly)
        m |= blade
        on = m > 0
        if not on.any():
            continue
        # Cast shadow of this leaf on what lies below, then paint it on top.
        shadow = np.roll(on.astype(np.float32), (2, 2), axis=(0, 1))
        shadow = cv2.GaussianBlur(shadow, (0, 0), 2.0)
        img *= (1 - 0.35 * shadow)[..., None]
        col = plant_col * rng.uniform(0.85, 1.15, 3).astype(np.float32) * rng.uniform(0.8, 1.15)
        # Lighter towards the tip and along the midrib; leaf texture.
        yy, xx = np.nonzero(on)
        along = np.clip(((xx - base[0]) * ca + (yy - base[1]) * sa) / max(lb, 1), 0, 1)
        across = np.abs(-(xx - base[0]) * sa + (yy - base[1]) * ca) / max(wb / 2, 1)
        shade = 0.85 + 0.2 * along + 0.1 * np.exp(-(across / 0.12) ** 2)
        stalk_only = (blade[yy, xx] == 0)
        shade[stalk_only] = 1.15  # petioles are paler
        img[yy, xx] = col[None] * shade[:, None]
        label[on] = k + 1
    label = _finalise_labels(label, min_area=6)
    img = img * (1 + 0.05 * _smooth_noise(rng, h, w, 3))[..., None] * _illumination(rng, h, w)[..., None]
    img = _finish(rng, img.astype(np.float32), blur=(0.8, 1.8), noise=(0.01, 0.035))
    return img, label


def join_diagonal_pieces(label: np.ndarray) -> np.ndarray:
    """Make thin structures 4-connected, as painted annotations are.

    A 1-px protrusion rasterised at an angle touches itself only at pixel corners; under the
    4-connectivity that defines an object's largest component (its training box, docs/method.md §3)
    it would fall apart into dozens of pieces. Wherever two pixels of one object meet only
    diagonally, one of the two shared-corner pixels is added to it if it is background.

    Args:
        label: (H, W) instance map, 0 = background. Returns a new map.
    """
    label = label.copy()
    for _ in range(2):  # a second pass joins corners created by the first
        for a, b, c, d in (  # diagonal (a, b) with corners (c, d), anti-diagonal likewise
            ((slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None)),
             (slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))),
            ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1)),
             (slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None))),
        ):
            la, lb, lc, ld = label[a], label[b], label[c], label[d]
            gap = (la > 0) & (la == lb) & (lc != la) & (ld != la)
            fill_c = gap & (lc == 0)
            lc[fill_c] = la[fill_c]  # views into ``label``
            fill_d = gap & ~fill_c & (ld == 0)
            ld[fill_d] = la[fill_d]
    return label
