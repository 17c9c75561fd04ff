"""Reading a compare folder for the diagnostics (objguided_d2.comparison.runs)."""
import argparse
import json

import pytest

from objguided_d2.comparison.runs import (DatasetNotFound, compare_order, dataset_from_args, finished_runs,
                                         resolve_dataset, run_name)


def test_finished_runs(tmp_path):
    with pytest.raises(ValueError, match="no runs/"):
        finished_runs(str(tmp_path))
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "b").mkdir()
    with pytest.raises(ValueError, match="no finished run"):
        finished_runs(str(tmp_path))
    (tmp_path / "runs" / "b" / "model_final.pth").write_bytes(b"x")
    (tmp_path / "runs" / "b" / "config.yaml").write_text("x")
    assert finished_runs(str(tmp_path)) == (str(tmp_path / "runs"), ["b"])
    with pytest.raises(ValueError, match="a: .*config.yaml not found"):
        finished_runs(str(tmp_path), ["a"])
    # a run with the model but no config is not finished: one rule for the listing and the check
    (tmp_path / "runs" / "a" / "model_final.pth").write_bytes(b"x")
    assert finished_runs(str(tmp_path))[1] == ["b"]
    # other required files (error_breakdown: the saved predictions, which archived runs keep)
    (tmp_path / "runs" / "a" / "preds.json").write_text("[]")
    assert finished_runs(str(tmp_path), required=("preds.json",))[1] == ["a"]
    with pytest.raises(ValueError, match=r"b: .*preds.json not found \(evaluate it\)"):
        finished_runs(str(tmp_path), ["b"], required=("preds.json",), hint="evaluate it")


def test_resolve_dataset():
    assert resolve_dataset([], "synth_leaves_tiny", "test") == "synth_leaves_tiny_test"
    with pytest.raises(DatasetNotFound, match="not registered") as e:
        resolve_dataset([], "nope", "test")
    assert e.value.name == "nope_test" and "--" not in str(e.value)
    with pytest.raises(DatasetNotFound) as e:
        resolve_dataset([], None, "test")
    assert e.value.name is None and "--" not in str(e.value)
    # The diagnostics' arguments: the message names their flags.
    args = argparse.Namespace(dataset=[], dataset_name="nope", split="test")
    with pytest.raises(ValueError, match="'nope_test' is not registered; give --dataset NAME=FORMAT:PATH"):
        dataset_from_args(args)
    with pytest.raises(ValueError, match="give --dataset-name or --dataset"):
        dataset_from_args(argparse.Namespace(dataset=[], dataset_name=None, split="test"))
    assert dataset_from_args(argparse.Namespace(dataset=[], dataset_name="synth_leaves_tiny", split="val")) == \
        "synth_leaves_tiny_val"


def test_write_report(tmp_path):
    from objguided_d2.comparison.runs import write_report

    path = tmp_path / "sub" / "r.md"
    write_report(str(path), "| a |", {"dataset": "d", "table": {"m": {199: {"APseg": 1.5}}}})
    assert path.read_text() == "| a |\n"
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"dataset": "d", "table": {"m": {"199": {"APseg": 1.5}}}}


def test_run_name(tmp_path):
    runs = tmp_path / "runs"
    for mid in ("Ours", "objguided_R18_tiny_norefine", "x"):
        (runs / mid).mkdir(parents=True)
    # "Ours+=configs/tiny/objguided_R18_tiny_plus.yaml" trains in runs/Ours: its name is "Ours+", not "Ours"
    (runs / "Ours" / "compare_run.json").write_text(json.dumps({"config_file": "/r/configs/tiny/objguided_R18_tiny_plus.yaml"}))
    assert run_name(str(runs), "Ours") == "Ours+"
    assert run_name(str(runs), "objguided_R18_tiny_norefine") == "Ours w/o refine"  # from the id alone
    # the name compare.py gave (results.json) wins
    (tmp_path / "results.json").write_text(json.dumps({"methods": [{"id": "x", "name": "My net"}]}))
    assert run_name(str(runs), "x") == "My net"
    (tmp_path / "results.json").write_text("{not json")  # a broken file falls back, no traceback
    assert run_name(str(runs), "x") == "x"


def test_compare_order_follows_the_comparison_table(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    assert compare_order(str(runs), ["b", "Ours", "a"]) == ["Ours", "a", "b"]  # no results.json: sorted
    (tmp_path / "results.json").write_text(json.dumps({"methods": [{"id": "b"}, {"id": "c"}, {"id": "a"}]}))
    assert compare_order(str(runs), ["Ours", "a", "b"]) == ["b", "a", "Ours"]  # unnamed ids last
    for rid in ("a", "b"):
        (runs / rid).mkdir()
        (runs / rid / "model_final.pth").write_bytes(b"x")
        (runs / rid / "config.yaml").write_text("x")
    assert finished_runs(str(tmp_path))[1] == ["b", "a"]
