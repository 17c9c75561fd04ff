"""benchmarks/seed_table.py (mean over seeds), benchmarks/data_scale.py (object scale),
benchmarks/error_breakdown.py (errors from saved predictions), benchmarks/oracle_boxes.py (box
sensitivity, on tiny untrained models) and
benchmarks/reevaluate_study.sh (a study copy with linked weights) on small
inputs they read back."""
import importlib.util
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.structures import BoxMode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results(folder, seed, values):
    os.makedirs(folder)
    methods = [
        {"id": mid, "name": name, "status": "ok" if ap is not None else "FAILED",
         "eval": {"results": {"paper": {"APseg": ap, "APdec": 2 * (ap or 0)}, "segm": {"AP": ap}}}}
        for mid, name, ap in values
    ]
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"settings": {"seed": seed}, "methods": methods}, f)


def test_seed_table_means_and_missing(tmp_path, capsys):
    st = _script("seed_table")
    _results(str(tmp_path / "s0"), 0, [("ours", "Ours", 20.0), ("mrcnn", "Mask R-CNN", 10.0)])
    _results(str(tmp_path / "s1"), 1, [("ours", "Ours", 24.0), ("mrcnn", "Mask R-CNN", None), ("pr", "PointRend", 5.0)])
    rows = st.seed_rows([str(tmp_path / "s0"), str(tmp_path / "s1")])
    by = {r["id"]: r["values"] for r in rows}
    assert by["ours"]["APseg"] == {"mean": 22.0, "seeds": [20.0, 24.0]}
    assert by["ours"]["APdec"]["mean"] == 44.0
    assert by["mrcnn"]["APseg"] == {"mean": None, "seeds": [10.0, None]}  # failed seed: no mean
    assert by["pr"]["APseg"]["seeds"] == [None, 5.0]
    out = tmp_path / "t.md"
    assert st.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--output", str(out)]) == 0
    text = out.read_text()
    assert "| Ours | 22.00 (20.00 / 24.00)" in text and "| Mask R-CNN | - (10.00 / -)" in text
    assert st.main([str(tmp_path / "s0"), "--output", str(out)]) == 2  # never overwritten silently
    assert out.read_text() == text
    with pytest.raises(SystemExit, match="results.json"):
        st.seed_rows([str(tmp_path / "nothing")])


def test_seed_table_checks_the_paper_targets(tmp_path, capsys):
    st = _script("seed_table")
    five = [("o", "Ours", 20.0), ("n", "Ours w/o refine", 21.0), ("m", "Mask R-CNN", 15.0), ("p", "PointRend", 24.0)]
    _results(str(tmp_path / "s0"), 0, five + [("plus", "Ours+", 30.0)])
    _results(str(tmp_path / "s1"), 1, five + [("plus", "Ours+", None)])
    rows = st.seed_rows([str(tmp_path / "s0"), str(tmp_path / "s1")])
    t = {x["target"]: x["checks"] for x in st.check_targets(rows, "margins")}
    pr = t["Ours or Ours+ >= PointRend + 5"]
    assert [c["which"] for c in pr] == ["mean", 0, 1]
    assert (pr[0]["method"], pr[0]["ok"]) == ("Ours", False)  # Ours+ failed on seed 1: no mean, Ours' counts
    assert (pr[1]["method"], pr[1]["ok"], pr[1]["margin"]) == ("Ours+", True, 6.0)  # 30 >= 24 + 5
    assert (pr[2]["method"], pr[2]["ok"]) == ("Ours", False)  # seed 1: only Ours counts, 20 < 29
    mr = t["Ours or Ours+ >= Mask R-CNN + 10"]
    assert mr[2]["ok"] is False and mr[1]["ok"] is True
    assert [c["ok"] for c in t["Ours >= Ours w/o refine"]] == [False, False, False]
    level = {x["target"]: x["checks"] for x in st.check_targets(rows, "level")}
    assert [c["ok"] for c in level["Ours or Ours+ >= PointRend"]] == [False, True, False]
    assert st.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--targets", "level"]) == 0
    assert "| Ours or Ours+ >= PointRend | **no**: Ours 20.00 vs 24.00 (-4.00) | **yes**: Ours+ 30.00" in capsys.readouterr().out


def test_data_scale_counts_radius_zero_objects():
    ds = _script("data_scale")
    rec = {"height": 64, "width": 64, "annotations": [
        {"bbox": [10, 10, 8, 8], "bbox_mode": BoxMode.XYWH_ABS},  # 2x2 cells: radius 0
        {"bbox": [20, 20, 40, 32], "bbox_mode": BoxMode.XYWH_ABS},  # 10x8 cells: radius > 0
        {"bbox": [0, 50, 5, 5], "bbox_mode": BoxMode.XYWH_ABS},  # cut by the border
    ]}
    sides, radii, inner = ds.object_scale([rec])
    np.testing.assert_allclose(sides, [8, 40, 5])
    assert radii.tolist()[0] == 0 and radii.tolist()[1] > 0
    assert inner.tolist() == [True, True, False]
    sides2, _, _ = ds.object_scale([rec], input_scale=2.0)
    np.testing.assert_allclose(sides2, 2 * sides)


def test_reevaluate_study_links_weights_and_copies_the_rest(tmp_path):
    import subprocess

    script = os.path.join(ROOT, "benchmarks", "reevaluate_study.sh")
    run = tmp_path / "study" / "runs" / "ours"
    (run / "eval").mkdir(parents=True)
    (run / "model_final.pth").write_bytes(b"weights")
    (run / "compare_run.json").write_text('{"key": "k"}')
    (run / "eval" / "eval.json").write_text("{}")
    out = tmp_path / "again"
    # PYTHON=echo: the compare command it would run is printed instead of run
    proc = subprocess.run([script, str(tmp_path / "study"), str(out), "--seed", "1"], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": "echo"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["tools/compare.py", "--seed", "1", "--output", str(out)]
    got = out / "runs" / "ours"
    assert os.path.islink(got / "model_final.pth") and (got / "model_final.pth").read_bytes() == b"weights"
    for f in ("compare_run.json", os.path.join("eval", "eval.json")):
        assert not os.path.islink(got / f) and os.path.isfile(got / f), f
    (got / "compare_run.json").write_text("changed")  # writing in OUT leaves the study as it was
    assert (run / "compare_run.json").read_text() == '{"key": "k"}'
    # an existing OUT or a folder without runs/ is refused, in one line
    again = subprocess.run([script, str(tmp_path / "study"), str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    bad = subprocess.run([script, str(tmp_path), str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no runs/" in bad.stderr


def test_error_breakdown_reads_saved_predictions(tmp_path, capsys):
    """Saved COCO results = the GT minus one object, plus one background mask: AP@0.5 from the
    script equals the paper's, one miss and one background FP are found, and bad input is one line."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from objguided_d2.data.register import register_dataset_spec
    from objguided_d2.evaluation.evaluator import gt_instances_from_dict
    from objguided_d2.evaluation.paper_ap import ImageInstances, paper_ap

    eb = _script("error_breakdown")
    register_dataset_spec("errs=synthetic:nuclei?image_size=96&num_train=1&num_val=1&num_test=2")
    records = DatasetCatalog.get("errs_test")
    to_dataset = {v: k for k, v in MetadataCatalog.get("errs_test").thing_dataset_id_to_contiguous_id.items()}
    results, gts, preds = [], [], []
    for i, rec in enumerate(records):
        gt = gt_instances_from_dict(rec)
        keep = list(range(len(gt))) if i else list(range(1, len(gt)))  # image 0 misses its first object
        masks = [gt.masks[j] for j in keep]
        scores = [0.9 - 0.01 * j for j in keep]
        bkg = np.zeros((rec["height"], rec["width"]), np.uint8)
        bkg[0:2, 0:2] = 1  # a corner no nucleus covers fully
        masks.append(mask_util.encode(np.asfortranarray(bkg)))
        scores.append(0.95)
        for m, s in zip(masks, scores):
            x, y, w, h = mask_util.toBbox(m).tolist()
            results.append({"image_id": rec["image_id"], "category_id": to_dataset[0], "score": s, "bbox": [x, y, w, h],
                            "segmentation": {"size": m["size"], "counts": m["counts"].decode("ascii")}})
        gts.append(gt)
        preds.append(ImageInstances(np.zeros(len(masks)), None, masks, np.asarray(scores)))
    run = tmp_path / "cmp" / "runs" / "m"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "coco_instances_results.json").write_text(json.dumps(results))
    out = tmp_path / "errors.md"
    assert eb.main([str(tmp_path / "cmp"), "--dataset-name", "errs", "--output", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())["methods"]["m"]
    assert data["AP50"] == pytest.approx(paper_ap(gts, preds)["AP50"])
    assert data["counts"]["missed"] == 1 and data["misses"]["missed"] == 1
    assert data["counts"]["bkg"] + data["counts"]["part"] + data["counts"]["loc"] == 2
    assert "| m | " in out.read_text()
    (run / "eval" / "coco_instances_results.json").write_text("{not json")
    with pytest.raises(SystemExit, match="coco_instances_results.json: cannot read"):
        eb.main([str(tmp_path / "cmp"), "--dataset-name", "errs"])
    with pytest.raises(SystemExit, match="no runs/"):
        eb.main([str(tmp_path), "--dataset-name", "errs"])


def _oracle_compare_dir(tmp_path):
    """A compare.py-like folder: runs/ours and runs/mrcnn, tiny untrained models (64 px input)."""
    import torch
    from detectron2.modeling import build_model

    from objguided_d2.config import load_config

    for mid, config in (("ours", "objguided_R18_tiny"), ("mrcnn", "mask_rcnn_R18_tiny")):
        run = tmp_path / "cmp" / "runs" / mid
        run.mkdir(parents=True)
        cfg = load_config(os.path.join(ROOT, "configs", "tiny", f"{config}.yaml"),
                          ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"])
        (run / "config.yaml").write_text(cfg.dump())
        torch.manual_seed(1)
        torch.save({"model": build_model(cfg).state_dict()}, run / "model_final.pth")
    return tmp_path / "cmp"


def test_oracle_boxes_sensitivity_table(tmp_path, capsys):
    """One row per method, one column per box; the exact-box column is the plain oracle's numbers,
    the detector's-box table follows; bad --scales / --shifts are one line, exit 2."""
    from detectron2.data import DatasetCatalog

    from objguided_d2.comparison.runs import load_run
    from objguided_d2.data.register import register_dataset_spec
    from objguided_d2.evaluation.oracle import oracle_object_ious, summarize_oracle

    ob = _script("oracle_boxes")
    cmp = _oracle_compare_dir(tmp_path)
    register_dataset_spec("orc=synthetic:nuclei?image_size=64&num_train=1&num_val=1&num_test=2")
    out = tmp_path / "oracle.md"
    assert ob.main([str(cmp), "--dataset-name", "orc", "--scales", "0.8", "1", "--shifts", "0", "0.2",
                    "--output", str(out)]) == 0
    text = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    assert [c["label"] for c in data["perturbations"]] == ["exact box", "s 0.8", "shift 0.2"]
    sens = [ln for ln in text.splitlines() if ln.startswith("| ") and ln.count("(") == 3]
    assert len(sens) == 4  # mIoU table and drop table, a row per method
    header = [ln for ln in text.splitlines() if ln.startswith("| Method | exact box")]
    assert header and header[0].split(" | ")[1:] == ["exact box", "s 0.8", "shift 0.2 |"]
    assert [ln.split(" | ")[0] for ln in sens] == ["| mrcnn", "| ours"] * 2  # sorted ids: no results.json
    assert all(ln.split(" | ")[1] == "+0.0 (+0)" for ln in sens[2:])  # no drop at the exact box
    dicts = DatasetCatalog.get("orc_test")
    for mid in ("ours", "mrcnn"):
        run = cmp / "runs" / mid
        _, model = load_run(str(run), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""],
                            weights=str(run / "model_final.pth"))
        exact = summarize_oracle(oracle_object_ious(model, dicts, min_size_test=64, max_size_test=128))
        got = data["sensitivity"][mid]
        assert got["exact box"]["summary"] == pytest.approx(exact, nan_ok=True)
        assert data["summary"][data["names"][mid]] == pytest.approx(exact, nan_ok=True)
        assert got["s 0.8"]["scale"] == 0.8 and got["shift 0.2"]["shift"] == 0.2
        n = int(exact["all n"])
        assert len(got["s 0.8"]["iou"]) == n and len(data["detected"][mid]["iou"]) == n
        assert all(0.0 <= v <= 1.0 for v in data["detected"][mid]["iou"])
        # the sensitivity cell and the detector-box row repeat the exact numbers
        cell = f"{exact['all mIoU']:.1f} ({exact['all IoU>0.5']:.0f}%)"
        assert f"| {mid} | {cell} |" in text
        det = data["detected"][mid]["summary"]
        assert (f"| {mid} | {n} | {exact['all mIoU']:.1f} | {exact['all IoU>0.5']:.1f} | {det['all mIoU']:.1f} | "
                f"{det['all IoU>0.5']:.1f} |") in text
    # Seeded: the same shifted boxes give the same IoUs again.
    ob.main([str(cmp), "--dataset-name", "orc", "--methods", "mrcnn", "--scales", "1", "--shifts", "0.2",
             "--output", str(tmp_path / "again.md")])
    again = json.loads((tmp_path / "again.json").read_text())["sensitivity"]["mrcnn"]["shift 0.2"]["iou"]
    assert again == data["sensitivity"]["mrcnn"]["shift 0.2"]["iou"]
    # No perturbation: the plain exact-box table only.
    capsys.readouterr()
    ob.main([str(cmp), "--dataset-name", "orc", "--methods", "mrcnn", "--scales", "1", "--shifts", "0"])
    assert "exact box" not in capsys.readouterr().out
    for flags, name in ((["--scales", "0.8", "0"], "--scales"), (["--shifts", "-0.1"], "--shifts")):
        with pytest.raises(SystemExit) as e:
            ob.main([str(cmp), "--dataset-name", "orc", *flags])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and name in err, err


def test_eval_variants_evaluates_each_variant_and_reuses_it(tmp_path, capsys):
    """Test-time rows: the run's weights evaluated per variant (the worker on its config.yaml with
    the variant's keys), a table with differences from the first variant, evaluations reused."""
    ev = _script("eval_variants")
    cmp = _oracle_compare_dir(tmp_path)
    spec = "evv=synthetic:nuclei?image_size=64&num_train=1&num_val=1&num_test=2"
    out = tmp_path / "rows.md"
    args = [str(cmp), "--dataset", spec, "--methods", "ours", "--threads", "1",
            "--variant", "base", "--variant", "thr0.9", "MODEL.OBJGUIDED.SCORE_THRESH_TEST", "0.9",
            "--output", str(out)]
    assert ev.main(args) == 0
    text = out.read_text()
    assert "| ours | base |" in text and "| ours | thr0.9 |" in text
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data["results"]["ours"]) == {"base", "thr0.9"}
    key = json.loads((cmp / "variants" / "ours" / "thr0.9" / "variant.json").read_text())["command"]
    assert key[key.index("MODEL.OBJGUIDED.SCORE_THRESH_TEST") + 1] == "0.9"
    assert key[key.index("--config-file") + 1].endswith(os.path.join("runs", "ours", "config.yaml"))
    done = cmp / "variants" / "ours" / "base" / "eval.json"
    mtime = done.stat().st_mtime
    assert ev.main(args) == 0 and done.stat().st_mtime == mtime  # reused, not evaluated again
    assert ev.main([str(cmp), "--dataset", spec, "--variant", "odd", "MODEL.OBJGUIDED.TOPK"]) == 2
    assert "KEY VALUE pairs" in capsys.readouterr().err
