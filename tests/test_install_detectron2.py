"""The detectron2 installer refuses a wheel whose sha256 does not match."""
import importlib.util
import os

import pytest

_spec = importlib.util.spec_from_file_location(
    "install_detectron2", os.path.join(os.path.dirname(__file__), "..", "tools", "install_detectron2.py")
)
install_detectron2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install_detectron2)


def test_refuses_wheel_with_wrong_hash(tmp_path, capsys):
    fake = tmp_path / install_detectron2.WHEEL_FILE
    fake.write_bytes(b"not the real wheel")
    assert install_detectron2.install_from_wheel(str(tmp_path)) is False
    assert "REFUSED" in capsys.readouterr().out


def test_keeps_importable_detectron2(capsys):
    assert install_detectron2.main(["--skip-source"]) == 0
    out = capsys.readouterr().out
    assert "already importable" in out and "compiled ops" in out


def test_sha256_of(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert install_detectron2.sha256_of(str(p)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
