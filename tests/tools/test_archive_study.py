"""A study folder archived without checkpoints (benchmarks/archive_study.py) is reused by the
runner in a fresh checkout: its runs count as finished, their stored evaluation is reported,
nothing in the study folder changes, and unfinished runs are left out."""
import importlib.util
import json
import os

import pytest

from objguided_d2.comparison.presets import parse_methods
from objguided_d2.comparison.records import RUN_META, archive_runs, is_finished, write_run_meta
from objguided_d2.comparison.runner import MethodResult, MethodRunner
from objguided_d2.comparison.settings import Budget

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MASK_RCNN = "configs/tiny/mask_rcnn_R18_tiny.yaml"


def _runner(out, **kw):
    return MethodRunner(str(out), budget=Budget(iters=1, batch=1, input_size=None, seed=0), datasets=[],
                        train_name="a_train", test_name="a_test", log=lambda s: None, device="cpu", **kw)


def _fake_study(tmp_path):
    """A compare folder with one finished, evaluated run ("done") and one still training ("busy")."""
    study = tmp_path / "study"
    done, busy = parse_methods([f"done={MASK_RCNN}", f"busy={MASK_RCNN}"])
    runner = _runner(study)
    for m in (done, busy):
        d = runner.run_dir(m)
        os.makedirs(os.path.join(d, "eval"))
        finished = m is done
        write_run_meta(d, {"key": runner.key(m), "finished": finished, "ended": "t1"})
        with open(os.path.join(d, "model_final.pth" if finished else "model_0000499.pth"), "wb") as f:
            f.write(b"\0" * 64)
        with open(os.path.join(d, "last_checkpoint"), "w") as f:
            f.write("model_final.pth" if finished else "model_0000499.pth")
        with open(os.path.join(d, "metrics.json"), "w") as f:
            f.write('{"iteration": 0, "total_loss": 1.0}\n')
    with open(os.path.join(runner.run_dir(done), "eval", "eval.json"), "w") as f:
        json.dump({"results": {"paper": {"APseg": 42.0}}}, f)
    (study / "table.md").write_text("| Method |\n")
    return study, done, busy


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns)


def test_archive_keeps_results_drops_weights_and_is_reused(tmp_path):
    study, done, busy = _fake_study(tmp_path)
    before = {p: (study / p).read_bytes() for p in _files(study)}
    dest = tmp_path / "archive"
    status = archive_runs(str(study), str(dest))
    assert status["done"] == "archived"
    assert status["busy"].startswith("left out: not finished")
    assert {p: (study / p).read_bytes() for p in _files(study)} == before  # the study is untouched
    files = _files(dest)
    assert "table.md" in files and os.path.join("runs", "done", "eval", "eval.json") in files
    assert not [p for p in files if p.endswith(".pth") or p.endswith("last_checkpoint")], files
    assert not (dest / "runs" / "busy").exists()
    meta = json.loads((dest / "runs" / "done" / RUN_META).read_text())
    assert meta["weights_removed"] and meta["finished"]

    # A second archive of the same run leaves it as it is.
    assert archive_runs(str(study), str(dest))["done"] == "unchanged"

    # The runner over the archive: finished with the stored evaluation, no training.
    runner = _runner(dest)
    assert runner.is_finished(done) and is_finished(runner.run_dir(done), runner.key(done))
    res = MethodResult(id=done.id, name=done.name, config_file=done.config_file)
    assert runner.train(done, res, "[1/1]", remaining=0) and res.reused and not res.trained
    assert runner.evaluate(done, res, "[1/1]") and res.eval["results"]["paper"]["APseg"] == 42.0
    # --reeval cannot redo it without weights: a clear failure, not a crash.
    res2 = MethodResult(id=done.id, name=done.name, config_file=done.config_file, reused=True)
    res2.run_dir = _runner(dest).run_dir(done)
    assert not _runner(dest, reeval=True).evaluate(done, res2, "[1/1]")
    assert res2.stage == "eval" and "cannot be evaluated again" in res2.reason
    # The library says what is wrong; the CLI's summary names the flag that helps.
    from objguided_d2.comparison.cli import _failure

    assert "use --retrain" in _failure(res2) and "--" not in res2.reason
    # Another run key (e.g. a changed budget) is not this run.
    other = MethodRunner(str(dest), budget=Budget(iters=2, batch=1, input_size=None, seed=0), datasets=[],
                         train_name="a_train", test_name="a_test", log=lambda s: None, device="cpu")
    assert not other.is_finished(done)


def test_archive_cli_errors_in_one_line(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("archive_study", os.path.join(ROOT, "benchmarks", "archive_study.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(tmp_path / "nope"), str(tmp_path / "dest")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "no runs/" in err
    study, _, _ = _fake_study(tmp_path)
    assert mod.main([str(study), str(study)]) == 2
    assert "study folder itself" in capsys.readouterr().err
    assert mod.main([str(study), str(tmp_path / "a")]) == 0
    assert "done: archived" in capsys.readouterr().out
