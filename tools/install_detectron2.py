#!/usr/bin/env python
"""Install detectron2 into the running Python environment, and say which way it took.

detectron2 has no release on PyPI under its own name, so setup.py cannot list it. This script
tries, in order:

1. detectron2 is already importable: keep it (nothing is installed).
2. The official source install, which also builds detectron2's compiled ops (needs network
   access to GitHub and a C++ compiler):
   ``pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'``
3. The pure-Python detectron2 snapshot inside the PyPI wheel ``sal-detectron2==0.7.2``
   (file ``sal_detectron2-0.7.2-cp310-none-any.whl``). The wheel's sha256 is verified and the
   install is refused on a mismatch. Its compiled ``_C`` is built for CPython 3.10 only; the
   Python package works everywhere (objguided-d2 needs none of the compiled ops).

At the end it prints which compiled ops are unavailable. Exit code 0 when detectron2 imports.

Usage: python tools/install_detectron2.py [--skip-source] [--wheel-dir DIR]
"""
import argparse
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

SOURCE_URL = "git+https://github.com/facebookresearch/detectron2.git"
WHEEL_SPEC = "sal-detectron2==0.7.2"
WHEEL_FILE = "sal_detectron2-0.7.2-cp310-none-any.whl"
WHEEL_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"


def _pip(*args, check=True):
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check).returncode


def _importable() -> bool:
    # A fresh interpreter: this process may have cached a failed import.
    code = "import detectron2, detectron2.modeling, detectron2.engine"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def install_from_source() -> bool:
    try:
        return _pip("install", "--no-build-isolation", SOURCE_URL, check=False) == 0 and _importable()
    except OSError as e:
        print(f"source install failed: {e}")
        return False


def install_from_wheel(wheel_dir=None) -> bool:
    tmp = tempfile.mkdtemp(prefix="d2wheel-")
    try:
        src = os.path.join(wheel_dir, WHEEL_FILE) if wheel_dir else None
        if not (src and os.path.isfile(src)):
            rc = _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.10",
                      "--platform", "any", WHEEL_SPEC, "-d", tmp, check=False)
            src = os.path.join(tmp, WHEEL_FILE)
            if rc != 0 or not os.path.isfile(src):
                print(f"could not download {WHEEL_SPEC} from PyPI")
                return False
        digest = sha256_of(src)
        if digest != WHEEL_SHA256:
            print(f"REFUSED: {src} has sha256 {digest}, expected {WHEEL_SHA256}")
            return False
        print(f"sha256 verified: {digest}")
        # The file is tagged cp310 only because of its compiled _C; the Python package is generic.
        dst = os.path.join(tmp, "sal_detectron2-0.7.2-py3-none-any.whl")
        shutil.copyfile(src, dst)
        # --no-deps: its metadata pins numpy<2, which detectron2 does not need; setup.py of
        # objguided-d2 installs detectron2's real dependencies.
        if _pip("install", "--no-deps", "--force-reinstall", dst, check=False) != 0:
            return False
        return _importable()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report_compiled_ops() -> None:
    importlib.invalidate_caches()
    import detectron2

    print(f"detectron2 {detectron2.__version__} at {os.path.dirname(detectron2.__file__)}")
    try:
        from detectron2 import _C  # noqa: F401

        print("compiled ops (detectron2._C): available")
    except Exception as e:  # ImportError or an ABI error
        print(f"compiled ops (detectron2._C): UNAVAILABLE ({type(e).__name__}: {e})")
        print("  unavailable: deformable conv (DCN), rotated boxes / rotated ROIAlign, box_iou_rotated,")
        print("  nms_rotated, the C++ fast COCO evaluation (COCOeval_opt), cocoapi fast path.")
        print("  objguided-d2, Mask R-CNN and PointRend do not need them; COCO evaluation uses pycocotools.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-source", action="store_true", help="do not try the GitHub source install")
    ap.add_argument("--wheel-dir", help="folder that already holds " + WHEEL_FILE)
    args = ap.parse_args(argv)

    if _importable():
        print("[1/3] detectron2 is already importable: keeping it")
    elif not args.skip_source and (print("[2/3] trying the official source install") or install_from_source()):
        print("[2/3] installed detectron2 from source")
    else:
        print(f"[3/3] installing the pure-Python detectron2 from the PyPI wheel {WHEEL_SPEC}")
        if not install_from_wheel(args.wheel_dir):
            print("ERROR: could not install detectron2 by any of the three ways", file=sys.stderr)
            return 1
        print(f"[3/3] installed detectron2 from {WHEEL_SPEC}")
    report_compiled_ops()
    return 0


if __name__ == "__main__":
    sys.exit(main())
