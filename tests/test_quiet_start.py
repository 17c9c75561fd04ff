"""The entry points hide exactly the dependencies' `torch.jit.script is deprecated` import
warning: a user's own torch.jit.script and every other warning still show."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSG = "`torch.jit.script` is deprecated"
USER = ("import warnings, torch\n"
        "def f(x: torch.Tensor) -> torch.Tensor:\n    return x + 1\n"
        "torch.jit.script(f)\n"
        "warnings.warn('a user warning', FutureWarning)\n")


def _stderr(tmp_path, code):
    script = tmp_path / "s.py"  # TorchScript needs the function's source file
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", PYTHONWARNINGS="always::FutureWarning")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_only_the_dependency_import_warning_is_hidden(tmp_path):
    alone = _stderr(tmp_path, USER).count(MSG)  # the user's own call: 1 on torch versions that deprecate it
    raw = _stderr(tmp_path, "import detectron2.modeling\n" + USER)
    quiet = _stderr(tmp_path, "import objguided_d2, detectron2.modeling\n" + USER)
    assert quiet.count(MSG) == alone
    assert "a user warning" in quiet
    if alone:  # this torch warns: importing Detectron2 without the filter adds fvcore's warnings
        assert raw.count(MSG) > alone


def test_cli_start_is_quiet():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "predict.py"), "--help"], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"), cwd=ROOT)
    assert r.returncode == 0 and "usage" in r.stdout
    assert "deprecated" not in r.stderr, r.stderr
