"""ObjGuidedCheckpointer: atomic writes, only complete checkpoints resumed, no NaN checkpoints,
plain (weights_only-loadable) content, and the output-dir guard."""
import os

import numpy as np
import pytest
import torch
from torch import nn

from objguided_d2.engine import checkpoint as ck
from objguided_d2.engine.checkpoint import (
    ObjGuidedCheckpointer,
    atomic_write,
    check_output_dir,
    is_complete_checkpoint,
    remove_partial_files,
    to_plain,
)


def _model(value: float = 1.0) -> nn.Module:
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(value)
    return m


def _partials(folder):
    return [n for n in os.listdir(folder) if n.endswith(ck.PARTIAL_SUFFIX)]


def test_save_is_atomic_and_plain(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    ckpt = ObjGuidedCheckpointer(model, str(tmp_path), optimizer=opt)
    ckpt.save("model_0000003", iteration=3, extra={"np_scalar": np.float32(2.5), "arr": np.arange(3)})
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert _partials(tmp_path) == []
    data = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert data["iteration"] == 3
    assert data["optimizer"]["state"][0]["step"].item() == 1
    assert data["extra"]["np_scalar"] == 2.5 and torch.equal(data["extra"]["arr"], torch.arange(3))
    assert torch.equal(data["model"]["0.weight"], model[0].weight)


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "last_checkpoint"
    target.write_text("model_0000001.pth")

    def boom(f):
        f.write(b"model_00")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), boom, mode="wb", overwrite=True)
    assert target.read_text() == "model_0000001.pth"
    assert _partials(tmp_path) == []


def test_nan_checkpoint_is_refused(tmp_path):
    model = _model()
    ckpt = ObjGuidedCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    with torch.no_grad():
        model[0].bias[2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"'0\.bias' has 1 non-finite value\(s\) \(NaN\)"):
        ckpt.save("model_0000003")
    assert not (tmp_path / "model_0000003.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert _partials(tmp_path) == []


def test_non_plain_state_is_refused():
    class Odd:
        pass

    with pytest.raises(TypeError, match=r"'/trainer/hooks/x' is a .*Odd"):
        to_plain({"trainer": {"hooks": {"x": Odd()}}})


def test_resume_ignores_half_written_checkpoint(tmp_path):
    """A kill while saving model_0000003 leaves its temporary file and the tag of model_0000001:
    resume takes model_0000001 and removes the leftover."""
    src = ObjGuidedCheckpointer(_model(1.0), str(tmp_path))
    src.save("model_0000001", iteration=1)
    full = (tmp_path / "model_0000001.pth").read_bytes()
    partial = tmp_path / ".model_0000003.pth.abcd1234.partial"
    partial.write_bytes(full[: len(full) // 2])
    user_file = tmp_path / ".notes.partial"  # not ours (name does not match): never deleted
    user_file.write_text("keep")

    dst_model = _model(0.0)
    dst = ObjGuidedCheckpointer(dst_model, str(tmp_path))
    extra = dst.resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert torch.all(dst_model[0].weight == 1.0)
    assert not partial.exists() and user_file.exists()


def test_resume_falls_back_from_truncated_tagged_file(tmp_path):
    """A tag naming a truncated file (written non-atomically, e.g. by plain Detectron2) is not
    taken as the latest: the newest complete model_*.pth is."""
    ckpt = ObjGuidedCheckpointer(_model(2.0), str(tmp_path))
    ckpt.save("model_0000001", iteration=1)
    full = (tmp_path / "model_0000001.pth").read_bytes()
    (tmp_path / "model_final.pth").write_bytes(full[:1000])
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    assert not is_complete_checkpoint(str(tmp_path / "model_final.pth"))
    assert is_complete_checkpoint(str(tmp_path / "model_0000001.pth"))

    dst = ObjGuidedCheckpointer(_model(0.0), str(tmp_path))
    assert dst.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    assert dst.resume_or_load("", resume=True)["iteration"] == 1
    # killed between renaming a checkpoint into place and writing the (first) tag
    (tmp_path / "last_checkpoint").unlink()
    assert dst.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")

    # nothing complete at all: no checkpoint to resume from (fresh start, not "iteration 1")
    (tmp_path / "model_0000001.pth").write_bytes(b"")
    assert not ObjGuidedCheckpointer(_model(), str(tmp_path)).has_checkpoint()


def test_remove_partial_files_only_touches_ours(tmp_path):
    (tmp_path / ".model_final.pth.x1y2z3w4.partial").write_bytes(b"PK")
    (tmp_path / "model_final.pth.partial").write_bytes(b"user")
    removed = remove_partial_files(str(tmp_path))
    assert [os.path.basename(p) for p in removed] == [".model_final.pth.x1y2z3w4.partial"]
    assert (tmp_path / "model_final.pth.partial").exists()


def test_output_dir_guard(tmp_path):
    out = tmp_path / "out"
    check_output_dir(str(out), resume=False, overwrite=False)  # missing: fine
    out.mkdir()
    (out / "notes.txt").write_text("x")
    check_output_dir(str(out), resume=False, overwrite=False)  # no run in it: fine
    (out / "model_final.pth").write_bytes(b"weights")
    (out / "last_checkpoint").write_text("model_final.pth")
    expected = r"already holds a training run \(last_checkpoint, model_final\.pth\).*--resume.*--overwrite"
    with pytest.raises(FileExistsError, match=expected):
        check_output_dir(str(out), resume=False, overwrite=False)
    check_output_dir(str(out), resume=True, overwrite=False)
    assert (out / "last_checkpoint").exists()
    check_output_dir(str(out), resume=False, overwrite=True)
    # the old tag goes (a later --resume cannot mix the runs); the weights stay until overwritten
    assert not (out / "last_checkpoint").exists() and (out / "model_final.pth").read_bytes() == b"weights"
