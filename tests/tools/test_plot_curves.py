"""curves.png from metrics.json: loss per iteration and APseg at evaluated checkpoints, read back."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import colors
from matplotlib.image import imread

from objguided_d2.comparison import plots
from objguided_d2.predict.writers import OutputExistsError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _metrics(run_dir, loss0, ap=None):
    os.makedirs(run_dir, exist_ok=True)
    rows = [{"iteration": i, "total_loss": loss0 / (1 + i / 50), "time": 0.1} for i in range(19, 200, 20)]
    rows += [{"iteration": it, "paper/APseg": v} for it, v in (ap or {}).items()]
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n{\"iteration\": 2")  # a line being written
    return rows


def _has_colour(img, name, tol=0.03):
    rgb = np.asarray(colors.to_rgb(name))
    return bool((np.abs(img[..., :3] - rgb).max(-1) < tol).sum() > 30)


def test_parsing_and_figure(tmp_path):
    from objguided_d2.comparison.progress import read_metrics

    a = read_metrics(str(tmp_path / "a" / "metrics.json")) or _metrics(str(tmp_path / "a"), 4.0, {99: 10.0, 199: 20.0})
    b = _metrics(str(tmp_path / "b"), 3.0)
    it, loss = plots.loss_curve(a)
    assert it.tolist() == list(range(20, 201, 20)) and loss[0] == pytest.approx(4.0 / 1.38)
    assert plots.checkpoint_metric(a) == {100: 10.0, 200: 20.0}
    assert plots.checkpoint_metric(b) == {}
    path = tmp_path / "curves.png"
    counts = plots.plot_training_curves({"ours": a, "Mask R-CNN": b}, str(path), extra_points={"Mask R-CNN": {150: 5.0}})
    assert counts == {"ours": 2, "Mask R-CNN": 1}
    img = imread(str(path))
    assert img.shape[:2] == (round(plots.CURVES_FIGSIZE[1] * plots.DPI), round(plots.CURVES_FIGSIZE[0] * plots.DPI))
    assert _has_colour(img, "C0") and _has_colour(img, "C1")  # both methods drawn
    with pytest.raises(OutputExistsError):
        plots.plot_training_curves({"ours": a}, str(path), overwrite=False)


def test_plot_curves_command(tmp_path):
    run = tmp_path / "output"
    _metrics(str(run), 2.0, {199: 33.0})
    cmd = [sys.executable, os.path.join(ROOT, "tools", "plot_curves.py"), str(run)]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "1 evaluated checkpoints" in r.stdout and (run / "curves.png").is_file()
    assert "deprecated" not in r.stderr  # the quiet start (objguided_d2/_quiet.py)
    img = imread(str(run / "curves.png"))
    assert _has_colour(img, "C0")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run(cmd[:-1] + [str(empty)], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "metrics.json" in r.stderr and "Traceback" not in r.stderr
