"""Figures of the comparison (matplotlib, Agg backend): the paper's Fig. 5 and Fig. 4.

* :func:`plot_ap_vs_iou`: APseg against the IoU threshold (0.50:0.05:0.95), one line per method.
* :func:`plot_training_curves`: ``curves.png``, training loss against iteration for every method
  (from each run's ``metrics.json``) and, where the runs were evaluated at saved checkpoints,
  APseg against iteration.
* :func:`plot_qualitative`: for each of a few test images, a row with the input, the ground truth
  and every method's masks (filled in translucent colours, instance boundaries in solid colour),
  and below it a row with the same panels enlarged on the image's most crowded / thin region
  (the window holding the most ground-truth boundary pixels, outlined in the row above).

Figure sizes are exact (no tight bounding box): ``PANEL_INCHES * DPI`` pixels per panel, so
``qualitative.png`` is ``(2 + M) * PANEL_PX`` wide and ``2 * K * PANEL_PX`` high for M methods
and K images, and ``ap_vs_iou.png`` is ``AP_FIGSIZE * DPI``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "DPI",
    "PANEL_INCHES",
    "PANEL_PX",
    "AP_FIGSIZE",
    "colorize",
    "crowded_window",
    "plot_ap_vs_iou",
    "plot_training_curves",
    "loss_curve",
    "checkpoint_metric",
    "plot_qualitative",
    "qualitative_size",
]

DPI = 100
PANEL_INCHES = 2.4
PANEL_PX = int(round(PANEL_INCHES * DPI))
AP_FIGSIZE = (6.4, 4.4)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def qualitative_size(num_methods: int, num_images: int) -> Tuple[int, int]:
    """(width, height) in pixels of :func:`plot_qualitative`'s figure."""
    return (2 + num_methods) * PANEL_PX, 2 * max(num_images, 1) * PANEL_PX


def plot_ap_vs_iou(curves: Dict[str, Tuple[Sequence[float], Sequence[float]]], path: str, title: str = "") -> None:
    """APseg (percent) vs IoU threshold, one line per method.

    Args:
        curves: method name -> (IoU thresholds (T,), APseg at each threshold (T,)); methods with
            no curve (failed) are listed in the legend as such.
        path: the PNG to write.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=AP_FIGSIZE, dpi=DPI)
    markers = "osD^v<>ph*"
    for i, (name, curve) in enumerate(curves.items()):
        if curve is None:
            ax.plot([], [], label=f"{name} (FAILED)", linestyle="none")
            continue
        t, ap = np.asarray(curve[0], float), np.asarray(curve[1], float)
        ax.plot(t, ap, marker=markers[i % len(markers)], label=name)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("APseg (%)")
    ax.set_xlim(0.48, 0.97)
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "APseg at IoU thresholds 0.50:0.05:0.95", fontsize=9)
    fig.subplots_adjust(left=0.11, right=0.97, top=0.92, bottom=0.12)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


CURVES_FIGSIZE = (7.2, 6.4)


def loss_curve(rows: Sequence[Dict], key: str = "total_loss") -> Tuple[np.ndarray, np.ndarray]:
    """(iterations, values) of ``key`` in Detectron2 ``metrics.json`` rows (1-based iterations)."""
    pts = [(int(r["iteration"]) + 1, float(r[key])) for r in rows
           if isinstance(r.get(key), (int, float)) and "iteration" in r]
    pts = sorted(dict(pts).items())  # a resumed run repeats iterations: keep the last value
    return np.array([p[0] for p in pts], int), np.array([p[1] for p in pts], float)


def checkpoint_metric(rows: Sequence[Dict], metric: str = "APseg") -> Dict[int, float]:
    """``{iteration: value}`` of the paper metric in the evaluation rows of ``metrics.json``
    (Detectron2's EvalHook writes them as ``paper/<metric>`` when ``TEST.EVAL_PERIOD`` > 0)."""
    out = {}
    for r in rows:
        v = r.get(f"paper/{metric}")
        if isinstance(v, (int, float)) and "iteration" in r and np.isfinite(v):
            out[int(r["iteration"]) + 1] = float(v)
    return out


def plot_training_curves(runs: Dict[str, Sequence[Dict]], path: str, *, metric: str = "APseg",
                         extra_points: Optional[Dict[str, Dict[int, float]]] = None, title: str = "",
                         overwrite: bool = True) -> Dict[str, int]:
    """Write ``curves.png``: ``total_loss`` against iteration per run (top) and ``metric`` at
    each evaluated checkpoint (bottom; ``metrics.json``'s evaluation rows and ``extra_points``,
    e.g. ``benchmarks/learning_curve.py``'s table, iteration -> percent).

    Args:
        runs: display name -> that run's ``metrics.json`` rows (:func:`read_metrics`).
        overwrite: False refuses an existing ``path`` (``OutputExistsError``); written atomically.
    Returns: ``{name: number of metric points}`` (0 where no checkpoint was evaluated).
    """
    from objguided_d2.predict.writers import atomic_write

    plt = _plt()
    fig, (ax_l, ax_m) = plt.subplots(2, 1, figsize=CURVES_FIGSIZE, dpi=DPI, sharex=True)
    counts = {}
    for i, (name, rows) in enumerate(runs.items()):
        color = f"C{i % 10}"
        it, loss = loss_curve(rows)
        ax_l.plot(it, loss, color=color, label=name if len(it) else f"{name} (no metrics.json)")
        pts = dict(checkpoint_metric(rows, metric))
        pts.update((extra_points or {}).get(name, {}))
        counts[name] = len(pts)
        if pts:
            xs = sorted(pts)
            ax_m.plot(xs, [pts[x] for x in xs], marker="o", color=color, label=name)
    ax_l.set_ylabel("training loss (total_loss)")
    ax_l.grid(True, alpha=0.3)
    ax_l.legend(loc="upper right", fontsize=8)
    ax_l.set_title(title or "Training curves", fontsize=9)
    ax_m.set_xlabel("iteration")
    ax_m.set_ylabel(f"{metric} (%) at saved checkpoints")
    ax_m.grid(True, alpha=0.3)
    if any(counts.values()):
        ax_m.legend(loc="lower right", fontsize=8)
    else:
        ax_m.text(0.5, 0.5, "no checkpoint was evaluated\n(TEST.EVAL_PERIOD > 0, or benchmarks/learning_curve.py)",
                  ha="center", va="center", transform=ax_m.transAxes, fontsize=8, color="0.4")
    fig.subplots_adjust(left=0.11, right=0.97, top=0.95, bottom=0.08, hspace=0.08)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"), overwrite=overwrite)
    finally:
        plt.close(fig)
    return counts


def _palette(n: int, seed: int = 0) -> np.ndarray:
    """(n + 1, 3) float colours in [0, 1]; row 0 (background) unused. Seeded so runs match."""
    rng = np.random.default_rng(seed)
    hues = rng.permutation(np.linspace(0.0, 1.0, max(n, 1), endpoint=False))
    import colorsys

    cols = [colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]
    return np.concatenate([np.zeros((1, 3)), np.asarray(cols, float).reshape(-1, 3)], axis=0)


def colorize(image_rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Instances of ``labels`` over the image: translucent fill, solid one-pixel boundaries.

    Args:
        image_rgb: (H, W, 3) uint8.
        labels: (H, W) int, 0 = background.

    Returns:
        (H, W, 3) uint8.
    """
    from skimage.segmentation import find_boundaries

    if labels.shape != image_rgb.shape[:2]:
        raise ValueError(f"colorize: label map {labels.shape} does not match the image {image_rgb.shape[:2]}")
    img = image_rgb.astype(np.float32) / 255.0
    ids, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    # Colours by rank, not by id, so sparse ids still get distinct colours.
    pal = _palette(len(ids))
    if ids[0] != 0:
        pal = pal[1:]
    col = pal[inv]
    fg = labels > 0
    out = img.copy()
    out[fg] = (1 - alpha) * img[fg] + alpha * col[fg]
    edge = find_boundaries(labels, mode="inner") & fg
    out[edge] = col[edge]
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def crowded_window(gt_labels: np.ndarray, size: int) -> Tuple[int, int, int, int]:
    """The ``size`` x ``size`` window with the most ground-truth boundary pixels.

    Thin protrusions and touching objects are where boundaries are dense, so this is where
    methods differ most. Returns (y0, x0, y1, x1), clipped to the image.
    """
    from scipy.ndimage import uniform_filter
    from skimage.segmentation import find_boundaries

    h, w = gt_labels.shape
    size = int(max(1, min(size, h, w)))
    edges = find_boundaries(gt_labels, mode="inner").astype(np.float64)
    if not edges.any():
        y0, x0 = (h - size) // 2, (w - size) // 2
        return y0, x0, y0 + size, x0 + size
    dens = uniform_filter(edges, size=size, mode="constant")
    half = size // 2
    # Only centres whose window lies inside the image.
    valid = dens[half : h - (size - half) + 1, half : w - (size - half) + 1]
    cy, cx = np.unravel_index(int(np.argmax(valid)), valid.shape)
    y0, x0 = int(cy), int(cx)
    return y0, x0, y0 + size, x0 + size


def plot_qualitative(
    images: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    predictions: Dict[str, Sequence[Optional[np.ndarray]]],
    path: str,
    *,
    crop_fraction: float = 1.0 / 3.0,
    titles: Optional[Sequence[str]] = None,
) -> List[Tuple[int, int, int, int]]:
    """Input, ground truth and each method's masks side by side, with enlarged crops.

    Args:
        images: K (H, W, 3) uint8 RGB test images.
        gts: K (H, W) ground-truth label maps.
        predictions: method name -> K label maps (None where the method has no prediction,
            e.g. it failed: the panel says so).
        path: the PNG to write; size :func:`qualitative_size`.
        crop_fraction: side of the enlarged window relative to the image's short side.
        titles: optional K image captions.

    Returns:
        the K crop windows (y0, x0, y1, x1).
    """
    plt = _plt()
    from matplotlib.patches import Rectangle

    if len(images) != len(gts):
        raise ValueError(f"plot_qualitative: {len(images)} images but {len(gts)} ground truths")
    for name, preds in predictions.items():
        if len(preds) != len(images):
            raise ValueError(f"plot_qualitative: method {name!r} has {len(preds)} predictions for {len(images)} images")
    k, m = len(images), len(predictions)
    wpx, hpx = qualitative_size(m, k)
    fig, axes = plt.subplots(2 * max(k, 1), 2 + m, figsize=(wpx / DPI, hpx / DPI), dpi=DPI, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    windows = []
    col_names = ["Input", "Ground truth", *predictions.keys()]
    for i in range(k):
        img, gt = images[i], gts[i]
        if img.shape[:2] != gt.shape:
            raise ValueError(f"plot_qualitative: image {i} is {img.shape[:2]} but its ground truth {gt.shape}")
        h, w = gt.shape
        win = crowded_window(gt, int(round(min(h, w) * crop_fraction)))
        windows.append(win)
        y0, x0, y1, x1 = win
        panels = [img, colorize(img, gt)]
        for name, preds in predictions.items():
            p = preds[i]
            if p is not None and p.shape != gt.shape:
                raise ValueError(f"plot_qualitative: {name!r} prediction {i} is {p.shape}, image is {gt.shape}")
            panels.append(None if p is None else colorize(img, p))
        for j, panel in enumerate(panels):
            top, bottom = axes[2 * i, j], axes[2 * i + 1, j]
            if panel is None:
                for ax in (top, bottom):
                    ax.imshow(img, alpha=0.3)
                    ax.text(0.5, 0.5, "FAILED", color="red", ha="center", va="center",
                            transform=ax.transAxes, fontsize=12, weight="bold")
                bottom.set_xlim(x0 - 0.5, x1 - 0.5)
                bottom.set_ylim(y1 - 0.5, y0 - 0.5)
            else:
                top.imshow(panel, interpolation="nearest")
                bottom.imshow(panel[y0:y1, x0:x1], interpolation="nearest")
            top.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                                    linewidth=1.0, linestyle="--"))
            if i == 0:
                top.set_title(col_names[j], fontsize=9)
        n_gt = len(np.unique(gt)) - (1 if (gt == 0).any() else 0)
        caption = titles[i] if titles else f"image {i}"
        axes[2 * i, 0].set_ylabel(f"{caption}\n{n_gt} objects", fontsize=7)
        axes[2 * i + 1, 0].set_ylabel("enlarged", fontsize=7)
    fig.subplots_adjust(left=0.04, right=0.995, top=0.97, bottom=0.005, wspace=0.03, hspace=0.05)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return windows
