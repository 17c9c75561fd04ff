"""End to end: tools/compare.py trains two tiny baselines and a broken method for a few iterations on
a tiny embedded dataset, writes every report file, reuses finished runs, retrains on --retrain, and
reports the broken method as FAILED while the others finish."""
import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from objguided_d2.comparison import plots
from objguided_d2.comparison.presets import PRESETS, parse_methods
from objguided_d2.comparison.report import COLUMNS
from objguided_d2.comparison.devices import JobSlots, slot_gpu
from objguided_d2.comparison.launch import failure_reason
from objguided_d2.comparison.records import run_key
from objguided_d2.comparison.runner import MethodRunner
from objguided_d2.comparison.settings import BEST_F1, Budget, SettingError, vis_score_arg
from objguided_d2.comparison.worker import label_map_from_instances, resolve_vis_score
from detectron2.data import DatasetCatalog
from detectron2.solver import build_lr_scheduler
from objguided_d2.config import config_chain, load_config
from objguided_d2.data.register import register_builtin_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPARE = os.path.join(ROOT, "tools", "compare.py")
SPEC = "cmp=synthetic:nuclei?image_size=96&num_train=4&num_val=2&num_test=2"
MASK_RCNN = "configs/tiny/mask_rcnn_R18_tiny.yaml"
POINTREND = "configs/tiny/pointrend_R18_tiny.yaml"
FAST = ["--iters", "2", "--batch", "2", "--input-size", "96", "--threads", "1", "--device", "cpu",
        "--speed-images", "2", "--warmup", "1", "--repeats", "2", "--vis-images", "2"]


def _compare(args, env):
    p = subprocess.run([sys.executable, COMPARE, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    return p.returncode, p.stdout + p.stderr


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("OBJGUIDED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    return dict(os.environ)


def _broken_config(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(f'_BASE_: "{os.path.join(ROOT, MASK_RCNN)}"\nMODEL:\n  META_ARCHITECTURE: "NoSuchArch"\n')
    return str(path)


def _png_size(path):
    import matplotlib.image

    img = matplotlib.image.imread(path)
    return img.shape[1], img.shape[0]


def _mtime(path):
    return os.stat(path).st_mtime_ns


def test_compare_end_to_end(tmp_path, env):
    out = tmp_path / "cmp"
    broken = _broken_config(tmp_path)
    args = ["--dataset", SPEC, "--configs", MASK_RCNN, POINTREND, f"broken={broken}", *FAST, "--output", str(out)]
    rc, log = _compare([*args, "--jobs", "2"], env)  # two methods at once; results keep the order
    assert rc == 1, log[-4000:]  # one method failed
    assert "CUDA is not available" not in log  # --device cpu: no fallback warning from reading the configs

    # --- the failed method is reported; the others finished
    res = json.loads((out / "results.json").read_text())
    by_id = {m["id"]: m for m in res["methods"]}
    assert list(by_id) == ["mask_rcnn_R18_tiny", "pointrend_R18_tiny", "broken"]
    assert by_id["broken"]["status"] == "FAILED" and by_id["broken"]["stage"] == "train"
    assert "NoSuchArch" in by_id["broken"]["reason"]
    assert os.path.isfile(by_id["broken"]["log"])
    for mid in ("mask_rcnn_R18_tiny", "pointrend_R18_tiny"):
        m = by_id[mid]
        assert m["status"] == "ok" and m["trained"] and not m["reused"], m
        assert (out / "runs" / mid / "model_final.pth").is_file()
        assert (out / "runs" / mid / "log.txt").is_file()
        ev = m["eval"]
        assert ev["results"]["paper"].keys() >= {"APseg", "APdec", "APseg50", "APseg75", "SEG", "bestDice"}
        assert ev["speed"]["num_images"] == 2 and ev["speed"]["repeats"] == 2 and ev["speed"]["fps"] > 0
        assert ev["speed"]["torch_threads"] == 1
        assert 5e6 < ev["params"] < 5e7  # tiny ResNet-18 models
        assert len(ev["curves"]["APseg_curve"]) == 10
    # different heads: different parameter counts, counted the same way
    assert by_id["mask_rcnn_R18_tiny"]["eval"]["params"] != by_id["pointrend_R18_tiny"]["eval"]["params"]

    # --- table.md / table.csv: one row per method, numbers in range
    md = (out / "table.md").read_text()
    rows_md = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| Method")]
    assert len(rows_md) == 3
    assert "FAILED" in rows_md[2] and "NoSuchArch" in rows_md[2] and "runs/broken/console.txt" in rows_md[2]
    assert "APseg@.5" in md and "FPS" in md and "Params (M)" in md
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["Mask R-CNN", "PointRend", "broken"]
    assert list(rows[0])[: len(COLUMNS)] == [k for k, _, _ in COLUMNS]
    for r in rows[:2]:
        assert r["status"] == "ok"
        for k in ("APdec", "APseg", "APseg50", "APseg75", "SEG", "bestDice"):
            assert 0.0 <= float(r[k]) <= 100.0, (k, r[k])
        assert float(r["APseg50"]) >= float(r["APseg"]) >= float(r["APseg75"])
        assert float(r["fps"]) > 0 and 5 < float(r["params_m"]) < 50
    assert rows[2]["status"] == "FAILED" and rows[2]["APseg"] == "" and "NoSuchArch" in rows[2]["reason"]
    assert float(rows[0]["params_m"]) == pytest.approx(by_id["mask_rcnn_R18_tiny"]["eval"]["params"] / 1e6)

    # --- figures with the documented sizes
    assert _png_size(out / "ap_vs_iou.png") == (round(plots.AP_FIGSIZE[0] * plots.DPI), round(plots.AP_FIGSIZE[1] * plots.DPI))
    assert _png_size(out / "qualitative.png") == plots.qualitative_size(3, 2)
    assert _png_size(out / "curves.png") == tuple(round(v * plots.DPI) for v in plots.CURVES_FIGSIZE)
    assert len(res["qualitative_crop_windows_yxyx"]) == 2
    for y0, x0, y1, x1 in res["qualitative_crop_windows_yxyx"]:
        assert 0 <= y0 < y1 <= 96 and 0 <= x0 < x1 <= 96
    vis = np.load(out / "runs" / "mask_rcnn_R18_tiny" / "eval" / "qualitative.npz")
    assert sorted(vis.files) == ["0", "1"] and vis["0"].shape == (96, 96)
    # the masks are drawn at each method's own F1-best cutoff (by default), which eval.json records
    for mid in ("mask_rcnn_R18_tiny", "pointrend_R18_tiny"):
        ev = by_id[mid]["eval"]
        best = ev["results"]["paper"]["F1_best_score"]
        assert ev["vis_score_rule"] == "best-f1"
        assert ev["vis_score"] == (pytest.approx(best) if best is not None else None)

    # --- reproduce.md: commands, hashes, versions
    rep = (out / "reproduce.md").read_text()
    for needle in ("tools/train_net.py", "objguided_d2.comparison.worker", "mask_rcnn_R18_tiny.yaml",
                   "Base-MaskRCNN-FPN.yaml", "torch", "detectron2", "torch_threads"):
        assert needle in rep, needle
    assert res["environment"]["python"] and res["settings"]["iters"] == 2
    assert "| Mask R-CNN" in log and "FAILED" in log  # the table is printed

    # --- a second invocation reuses the finished runs (no training, no re-evaluation)
    weights = {mid: _mtime(out / "runs" / mid / "model_final.pth") for mid in ("mask_rcnn_R18_tiny", "pointrend_R18_tiny")}
    metrics = {mid: (out / "runs" / mid / "metrics.json").read_text() for mid in weights}
    rc, log2 = _compare(args, env)
    assert rc == 1, log2[-4000:]
    res2 = json.loads((out / "results.json").read_text())
    for m in res2["methods"][:2]:
        assert m["status"] == "ok" and m["reused"] and not m["trained"], m
        assert _mtime(out / "runs" / m["id"] / "model_final.pth") == weights[m["id"]]
        assert (out / "runs" / m["id"] / "metrics.json").read_text() == metrics[m["id"]]
        assert m["eval"]["results"] == by_id[m["id"]]["eval"]["results"]
    assert "reusing the finished run" in log2
    assert res2["methods"][2]["status"] == "FAILED"

    # --- a changed budget is a different run: not reused
    budget = Budget(iters=2, batch=2, input_size=96, seed=0)
    k1 = run_key(os.path.join(ROOT, MASK_RCNN), [], budget, [SPEC], "cmp_train")
    assert k1 == json.loads((out / "runs" / "mask_rcnn_R18_tiny" / "compare_run.json").read_text())["key"]
    assert k1 != run_key(os.path.join(ROOT, MASK_RCNN), [], Budget(3, 2, 96, 0), [SPEC], "cmp_train")
    assert k1 != run_key(os.path.join(ROOT, MASK_RCNN), [], Budget(2, 2, 96, 1), [SPEC], "cmp_train")
    assert k1 != run_key(os.path.join(ROOT, MASK_RCNN), ["SOLVER.BASE_LR", "0.1"], budget, [SPEC], "cmp_train")

    # --- --retrain trains again (only Mask R-CNN here, to keep the test short)
    rc, log3 = _compare(["--dataset", SPEC, "--configs", MASK_RCNN, *FAST, "--output", str(out), "--retrain"], env)
    assert rc == 0, log3[-4000:]
    res3 = json.loads((out / "results.json").read_text())
    (m,) = res3["methods"]
    assert m["trained"] and not m["reused"] and m["status"] == "ok"
    assert _mtime(out / "runs" / "mask_rcnn_R18_tiny" / "model_final.pth") != weights["mask_rcnn_R18_tiny"]
    assert "training 2 iterations" in log3


def test_bad_arguments_fail_clearly(tmp_path, env):
    rc, log = _compare(["--dataset-name", "no_such_data", "--output", str(tmp_path / "o")], env)
    assert rc == 2 and "no_such_data_train" in log and "not registered" in log
    rc, log = _compare(["--configs", "configs/tiny/nope.yaml", "--output", str(tmp_path / "o")], env)
    assert rc == 2 and "nope.yaml" in log and "not found" in log
    rc, log = _compare(["--vis-score", "high", "--output", str(tmp_path / "o")], env)
    assert rc == 2 and "--vis-score" in log and "'high'" in log and "best-f1" in log


def test_settings_errors_in_library_terms_flags_in_the_cli(tmp_path, capsys):
    from objguided_d2.comparison.cli import main
    from objguided_d2.comparison.presets import MethodSpecError

    with pytest.raises(SettingError) as e:
        Budget(iters=2, batch=1, input_size=8, seed=0)
    assert (e.value.name, e.value.value) == ("input_size", 8) and "--" not in str(e.value)
    with pytest.raises(MethodSpecError, match="empty NAME") as e:
        parse_methods([f"={MASK_RCNN}"])
    assert "--" not in str(e.value)
    for argv, flag, message in ((["--iters", "0"], "--iters", "must be >= 1, got 0"),
                                (["--input-size", "8"], "--input-size", "must be >= 16 pixels, got 8"),
                                (["--configs", f"={MASK_RCNN}"], "--configs", "empty NAME before '='")):
        with pytest.raises(SystemExit) as ex:
            main([*argv, "--device", "cpu", "--output", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert ex.value.code == 2 and err.startswith(f"tools/compare.py: error: {flag}") and message in err, err
    assert not (tmp_path / "o").exists()  # nothing made before the arguments are checked


def test_vis_score_fixed_or_each_methods_f1_best():
    assert vis_score_arg("best-f1") == BEST_F1 and vis_score_arg("0.3") == 0.3
    with pytest.raises(argparse.ArgumentTypeError, match="best-f1"):
        vis_score_arg("high")
    assert resolve_vis_score(0.3, {"paper": {"F1_best_score": 0.2}}) == 0.3
    assert resolve_vis_score(BEST_F1, {"paper": {"F1_best_score": 0.2}}) == 0.2
    assert resolve_vis_score(BEST_F1, {"paper": {"F1_best_score": float("nan")}}) == float("inf")  # no match
    assert resolve_vis_score(BEST_F1, {"segm": {}}) == 0.5  # paper metrics switched off


def test_label_map_draws_only_masks_at_or_above_the_score():
    from detectron2.structures import Instances

    inst = Instances((8, 8))
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :4], masks[1, 4:], masks[2, :, :2] = True, True, True
    inst.pred_masks, inst.scores = masks, torch.tensor([0.9, 0.2, 0.4])
    lab = label_map_from_instances(inst, 0.4)
    assert len(np.unique(lab[lab > 0])) == 2 and not lab[4:, 2:].any()  # the 0.2 mask is left out
    assert lab[0, 0] == lab[0, 5] != lab[5, 0]  # the 0.9 mask is painted over the 0.4 one
    assert not label_map_from_instances(inst, float("inf")).any()


def test_methods_presets_and_config_chain(tmp_path):
    methods = parse_methods(PRESETS["demo"].configs)
    assert [m.name for m in methods] == ["Ours", "Ours w/o refine", "Mask R-CNN", "PointRend"]
    assert len({m.id for m in methods}) == 4
    assert [m.name for m in parse_methods(PRESETS["paper-gpu"].configs)] == [m.name for m in methods]
    # the demo trains on paper-scale leaves (registered built-in) with native-scale crops
    demo = PRESETS["demo"]
    names = register_builtin_synthetic()
    assert f"{demo.dataset}_train" in names and f"{demo.dataset}_test" in names
    assert f"{demo.dataset}_test" in DatasetCatalog.list()
    opts = dict(zip(demo.opts[::2], demo.opts[1::2]))
    assert int(opts["INPUT.NATIVE_CROP_SIZE"]) < demo.input_size
    assert int(opts["SOLVER.CHECKPOINT_PERIOD"]) < demo.iters
    # every demo method decays its learning rate along the cosine to ~0 by the last iteration
    for m in methods:
        cfg = load_config(os.path.join(ROOT, m.config_file), list(demo.opts) + ["SOLVER.MAX_ITER", str(demo.iters)])
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
        sched = build_lr_scheduler(cfg, opt)
        lrs = []
        for _ in range(demo.iters):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        peak = max(lrs)
        assert lrs[demo.iters // 2] < 0.6 * peak and lrs[-1] < 0.01 * peak, m.config_file
    with pytest.raises(ValueError, match="both map to run folder"):
        parse_methods([MASK_RCNN, MASK_RCNN])
    assert [m.id for m in parse_methods([MASK_RCNN, f"again={MASK_RCNN}"])] == ["mask_rcnn_R18_tiny", "again"]
    chain = config_chain(os.path.join(ROOT, "configs/tiny/objguided_R18_tiny_norefine.yaml"))
    assert [os.path.basename(p) for p in chain] == [
        "objguided_R18_tiny_norefine.yaml", "objguided_R18_tiny.yaml", "Base-ObjGuided.yaml"]
    # the run key follows the contents of a _BASE_ file, not only the named file
    base = tmp_path / "base.yaml"
    child = tmp_path / "child.yaml"
    base.write_text("SOLVER:\n  BASE_LR: 0.1\n")
    child.write_text('_BASE_: "base.yaml"\n')
    b = Budget(2, 2, 96, 0)
    k = run_key(str(child), [], b, [], "x_train")
    base.write_text("SOLVER:\n  BASE_LR: 0.2\n")
    assert run_key(str(child), [], b, [], "x_train") != k


def test_failure_reason(tmp_path):
    log = tmp_path / "console.txt"
    log.write_text("Traceback (most recent call last):\n  File x\nValueError: bad thing\n[info] shutting down\n")
    assert failure_reason(str(log), 1) == "ValueError: bad thing"
    log.write_text("just some output\n")
    assert failure_reason(str(log), -9) == "killed by signal 9: just some output"
    assert failure_reason(str(tmp_path / "missing.txt"), 3) == "exit code 3"


def test_crowded_window_and_colorize():
    gt = np.zeros((60, 80), dtype=np.int32)
    gt[40:44, 60:64] = 1
    gt[40:44, 65:69] = 2  # boundaries only in the lower right
    y0, x0, y1, x1 = plots.crowded_window(gt, 20)
    assert (y1 - y0, x1 - x0) == (20, 20)
    assert y0 <= 40 and y1 >= 44 and x0 <= 60 and x1 >= 69
    img = np.full((60, 80, 3), 100, np.uint8)
    col = plots.colorize(img, gt)
    assert col.shape == img.shape and (col[0, 0] == 100).all() and not (col[41, 61] == 100).all()
    assert not np.array_equal(col[41, 61], col[41, 66])  # two instances, two colours


def _runner(tmp_path, **kw):
    return MethodRunner(str(tmp_path), budget=Budget(iters=1, batch=1, input_size=None, seed=0), datasets=[],
                        train_name="a_train", test_name="a_test", log=lambda s: None, **kw)


def test_jobs_run_methods_at_once_in_order(tmp_path, monkeypatch):
    import threading
    import time

    methods = parse_methods([f"m{i}={MASK_RCNN}" for i in range(5)])
    runner = _runner(tmp_path, device="cpu", jobs=2)
    lock, running, peak, seen_slots = threading.Lock(), [0], [0], set()

    def fake_train(method, res, position, remaining):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen_slots.add(runner.slots.current)
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return method.id != "m3"  # one failure must not stop the others

    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.setattr(runner, "evaluate", lambda method, res, position: True)
    results = runner.run(methods)
    assert [r.id for r in results] == ["m0", "m1", "m2", "m3", "m4"]
    assert [r.status for r in results] == ["ok", "ok", "ok", "FAILED", "ok"]
    assert peak[0] == 2 and seen_slots == {0, 1}
    with pytest.raises(SettingError, match="jobs must be >= 1"):
        _runner(tmp_path, device="cpu", jobs=0)


def test_jobs_give_each_slot_its_own_gpu(tmp_path, monkeypatch):
    assert slot_gpu(1) == "1" and slot_gpu(0, "4,5") == "4" and slot_gpu(3, "4,5") == "5"
    runner = _runner(tmp_path, device="cuda", jobs=2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # Each worker thread of run() sees its own slot's GPU in the subprocess environment.
    seen = runner.slots.map(lambda i, _: (runner.slots.current, runner.env()["CUDA_VISIBLE_DEVICES"]), [0, 1])
    assert sorted(seen) == [(0, "0"), (1, "1")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    seen = runner.slots.map(lambda i, _: (runner.slots.current, runner.env()["CUDA_VISIBLE_DEVICES"]), [0, 1])
    assert sorted(seen) == [(0, "4"), (1, "5")]
    # One job, the CPU, or outside a slot: the environment is left as it is.
    assert runner.env()["CUDA_VISIBLE_DEVICES"] == "4,5"
    cpu = _runner(tmp_path, device="cpu", jobs=2)
    assert cpu.slots.map(lambda i, _: cpu.env()["CUDA_VISIBLE_DEVICES"], [0, 1]) == ["4,5", "4,5"]
    one = JobSlots(1, "cuda")
    assert one.map(lambda i, _: one.cuda_visible(), [0, 1]) == [None, None]
