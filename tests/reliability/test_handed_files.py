"""Files a user can be handed (a colleague's model folder, a config, weights, images, split files,
COCO JSONs): none of them runs code or reaches outside its folder, and each refusal is one line
naming the file. Every case is listed in docs/reliability.md (section "Files a user is handed")."""
import importlib.util
import json
import os
import pickle
import struct
import threading
import zlib

import cv2
import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from objguided_d2.config import ConfigError, load_config
from objguided_d2.data.datasets import convert_to_coco, prepare_coco
from objguided_d2.data.io import MAX_IMAGE_PIXELS_ENV, DataError, read_image
from objguided_d2.engine.checkpoint import ObjGuidedCheckpointer
from objguided_d2.engine.safe_load import TRUST_HINT, UntrustedFileError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs/tiny/mask_rcnn_R18_tiny.yaml")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OBJGUIDED_CACHE", str(tmp_path / "cache"))


def _evil_yaml(path, marker):
    """A config whose YAML Python tag would run a shell command that creates ``marker``."""
    path.write_text(f'MODEL:\n  META_ARCHITECTURE: !!python/object/apply:os.system ["touch {marker}"]\n')
    return path


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "marker"
    return _evil_yaml(tmp_path / "evil.yaml", marker), marker


def _one_line_naming(err: str, path) -> str:
    lines = [ln for ln in err.strip().splitlines() if str(path) in ln]
    assert lines, err
    assert "Traceback" not in err and "ConstructorError" not in err, err
    assert "Python tag" in lines[-1] and "python/object/apply" in lines[-1], lines[-1]
    return lines[-1]


# ------------------------------------------------------------------------- configs
def test_load_config_refuses_python_tag_in_file_and_base(tmp_path, evil):
    cfg_file, marker = evil
    with pytest.raises(ConfigError, match=r"evil\.yaml: YAML Python tag .*python/object/apply.*refused"):
        load_config(str(cfg_file))
    child = tmp_path / "child.yaml"
    child.write_text(f'_BASE_: ["{TINY}", "evil.yaml"]\nSEED: 3\n')
    with pytest.raises(ConfigError) as e:
        load_config(str(child))
    assert str(cfg_file) in str(e.value) and "a _BASE_ of" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_train_net_config_file(evil, capsys):
    from objguided_d2.engine.train_net import cli

    cfg_file, marker = evil
    with pytest.raises(SystemExit) as e:
        cli(["--config-file", str(cfg_file), "MODEL.DEVICE", "cpu"])
    assert e.value.code == 2
    assert _one_line_naming(capsys.readouterr().err, cfg_file).startswith("ConfigError: ")
    assert not marker.exists()


def test_train_net_base(tmp_path, evil, capsys):
    from objguided_d2.engine.train_net import cli

    cfg_file, marker = evil
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "evil.yaml"\nSEED: 3\n')
    with pytest.raises(SystemExit) as e:
        cli(["--config-file", str(child), "MODEL.DEVICE", "cpu"])
    assert e.value.code == 2
    _one_line_naming(capsys.readouterr().err, cfg_file)
    assert not marker.exists()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), np.zeros((32, 32, 3), np.uint8))
    return path


def test_predict_model_dir_config(tmp_path, image, capsys):
    """The issue's report: a colleague's model folder whose config.yaml carries a Python tag."""
    from objguided_d2.predict.cli import main

    model = tmp_path / "their_model"
    model.mkdir()
    marker = tmp_path / "marker"
    cfg_file = _evil_yaml(model / "config.yaml", marker)
    (model / "model_final.pth").write_bytes(b"weights")
    rc = main(["--no-progress", str(image), "--model-dir", str(model), "--output", str(tmp_path / "out")])
    assert rc == 2
    _one_line_naming(capsys.readouterr().err, cfg_file)
    assert not marker.exists()


def test_predict_config_file(tmp_path, evil, image, capsys):
    from objguided_d2.predict.cli import main

    cfg_file, marker = evil
    rc = main(["--no-progress", str(image), "--config-file", str(cfg_file), "--weights", str(tmp_path / "w.pth"),
               "--output", str(tmp_path / "out")])
    assert rc == 2
    _one_line_naming(capsys.readouterr().err, cfg_file)
    assert not marker.exists()


def test_compare_configs(tmp_path, evil, capsys):
    from objguided_d2.comparison.cli import main

    cfg_file, marker = evil
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as e:
        main(["--configs", str(cfg_file), "--iters", "1", "--device", "cpu", "--output", str(out)])
    assert e.value.code == 2
    _one_line_naming(capsys.readouterr().err, cfg_file)
    assert not marker.exists() and not out.exists()  # refused before anything is trained or written


def test_compare_worker_config(tmp_path, evil, capsys):
    from objguided_d2.comparison.worker import main

    cfg_file, marker = evil
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"weights")
    rc = main(["--config-file", str(cfg_file), "--weights", str(weights), "--test-dataset", "synth_nuclei_tiny_test",
               "--output", str(tmp_path / "eval")])
    assert rc == 2
    assert _one_line_naming(capsys.readouterr().err, cfg_file).startswith("ConfigError: ")
    assert not marker.exists()


def _diagnostic(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diagnostics_run_config(tmp_path):
    run = tmp_path / "cmp" / "runs" / "m"
    run.mkdir(parents=True)
    marker = tmp_path / "marker"
    cfg_file = _evil_yaml(run / "config.yaml", marker)
    (run / "model_final.pth").write_bytes(b"weights")
    for name in ("oracle_boxes", "learning_curve"):
        with pytest.raises(SystemExit) as e:
            _diagnostic(name).main([str(tmp_path / "cmp"), "--dataset-name", "synth_nuclei_tiny", "--iters", "0"]
                                   if name == "learning_curve" else [str(tmp_path / "cmp"), "--dataset-name",
                                                                     "synth_nuclei_tiny"])
        msg = str(e.value.code)
        assert str(cfg_file) in msg and "Python tag" in msg and "\n" not in msg, msg
    assert not marker.exists()


# ------------------------------------------------------------------------- weights
def _pickled_weights(path):
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(3)}, "__author__": "test"}, f)
    return path


def test_pickles_need_the_flag_with_one_message_in_every_tool(tmp_path):
    """train_net / --eval-only and the worker (ObjGuidedCheckpointer), predict (load_weights), the
    diagnostics (load_run): the same refusal, the same hint."""
    from objguided_d2.comparison.runs import load_run
    from objguided_d2.predict.predictor import ModelError, load_weights

    pkl = _pickled_weights(tmp_path / "w.pkl")
    with pytest.raises(UntrustedFileError) as e:
        ObjGuidedCheckpointer(nn.Linear(3, 1)).load(str(pkl))
    assert TRUST_HINT in str(e.value)
    with pytest.raises(ModelError) as e:
        load_weights(nn.Linear(3, 1), str(pkl))
    assert TRUST_HINT in str(e.value) and "w.pkl" in str(e.value)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(open(TINY).read().replace('"../', f'"{ROOT}/configs/'))
    with pytest.raises(SystemExit) as e:
        load_run(str(run), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""], weights=str(pkl))
    assert TRUST_HINT in str(e.value.code) and str(e.value.code).startswith("UntrustedFileError: ")


# ------------------------------------------------------------------------- last_checkpoint
@pytest.mark.parametrize("tag", ["../outside.pth", "ABS"])
def test_last_checkpoint_outside_its_folder_is_refused(tmp_path, tag):
    from objguided_d2.predict.predictor import ModelError, resolve_model_dir

    outside = tmp_path / "outside.pth"
    ObjGuidedCheckpointer(nn.Linear(3, 1), str(tmp_path / "elsewhere")).save("model_final")
    os.replace(tmp_path / "elsewhere" / "model_final.pth", outside)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("SEED: 1\n")
    (run / "last_checkpoint").write_text(str(outside) if tag == "ABS" else tag)
    with pytest.raises(ModelError, match=r"last_checkpoint: names .*outside\.pth.*not a file in"):
        resolve_model_dir(str(run))
    # training's --resume reads the same tag
    with pytest.raises(UntrustedFileError, match=r"last_checkpoint: names"):
        ObjGuidedCheckpointer(nn.Linear(3, 1), str(run)).resume_or_load("", resume=True)
    # a plain tag still works
    ObjGuidedCheckpointer(nn.Linear(3, 1), str(run)).save("model_final")
    assert resolve_model_dir(str(run))[1] == str(run / "model_final.pth")


# ------------------------------------------------------------------------- images
def _huge_png(path, width=100000, height=100000):
    """A valid 8x8 PNG whose IHDR then claims width x height (the CRC fixed): a few hundred bytes."""
    cv2.imwrite(str(path), np.zeros((8, 8), np.uint8))
    b = bytearray(path.read_bytes())
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    path.write_bytes(bytes(b))
    return path


def _huge_tiff(path, width=100000, height=100000):
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(height)
    return path


@pytest.mark.parametrize("make", [_huge_png, _huge_tiff], ids=["png", "tiff"])
def test_huge_header_is_refused_before_decoding(tmp_path, make):
    path = make(tmp_path / ("huge.png" if make is _huge_png else "huge.tif"))
    assert path.stat().st_size < 1000
    with pytest.raises(DataError) as e:
        read_image(str(path))
    msg = str(e.value)
    assert msg.startswith(str(path)) and "claims 100000x100000 px" in msg and MAX_IMAGE_PIXELS_ENV in msg


def test_pixel_limit_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.zeros((40, 50), np.uint8))
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1999")
    with pytest.raises(DataError, match=r"claims 50x40 px \(2,000 pixels\), more than the limit of 1,999"):
        read_image(str(path))
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "2000")
    assert read_image(str(path)).shape == (40, 50, 3)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(DataError, match=MAX_IMAGE_PIXELS_ENV):
        read_image(str(path))


def test_tiff_stack_counts_every_plane(tmp_path, monkeypatch):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 10, 10), np.uint8), photometric="minisblack")
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "299")
    with pytest.raises(DataError, match=r"claims 10x10 px x 3 planes"):
        read_image(str(path))


# ------------------------------------------------------------------------- split files, COCO JSON
def _labelfolder(root):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lab = np.zeros((8, 8), np.uint16)
    lab[2:5, 2:5] = 1
    for stem in ("a", "b", "c"):
        cv2.imwrite(str(root / "images" / f"{stem}.png"), np.zeros((8, 8), np.uint8))
        tifffile.imwrite(root / "labels" / f"{stem}.tif", lab)
    return root


@pytest.mark.parametrize("entry", ["../other/images/a.png", "/etc/passwd"])
def test_split_file_entry_outside_the_dataset_is_refused(tmp_path, entry):
    root = _labelfolder(tmp_path / "ds")
    (root / "train.txt").write_text(f"a\n{entry}\n")
    with pytest.raises(DataError) as e:
        convert_to_coco("labelfolder", str(root))
    msg = str(e.value)
    assert msg.startswith(str(root / "train.txt")) and repr(entry) in msg and "outside the dataset root" in msg


def _coco(file_names):
    return {"images": [{"id": i + 1, "file_name": f, "height": 8, "width": 8} for i, f in enumerate(file_names)],
            "annotations": [], "categories": [{"id": 1, "name": "cell"}]}


@pytest.mark.parametrize("name", ["../secret.png", "/etc/hosts", "images/../../secret.png"])
def test_coco_file_name_outside_the_image_root_is_refused(tmp_path, name):
    folder = tmp_path / "coco"
    folder.mkdir()
    (folder / "all.json").write_text(json.dumps(_coco(["a.png", name])))
    with pytest.raises(DataError) as e:
        prepare_coco(str(folder / "all.json"))
    msg = str(e.value)
    assert msg.startswith(str(folder / "all.json")) and repr(name) in msg and "outside the image root" in msg
    for s in ("train", "val", "test"):  # the three-file layout too
        (folder / f"{s}.json").write_text(json.dumps(_coco([name])))
    with pytest.raises(DataError, match="outside the image root"):
        prepare_coco(str(folder))


def test_coco_file_names_resolving_inside_are_kept(tmp_path):
    folder = tmp_path / "coco"
    folder.mkdir()
    names = ["a.png", "sub/../b.png", str(folder / "c.png")]
    (folder / "all.json").write_text(json.dumps(_coco(names)))
    ds = prepare_coco(str(folder / "all.json"), ratios=(1, 0, 0))
    with open(ds.json_files["train"]) as f:
        assert sorted(im["file_name"] for im in json.load(f)["images"]) == sorted(names)


# ------------------------------------------------------------------------- outputs
def test_two_runs_writing_run_metadata_at_once_both_end_valid(tmp_path):
    """compare_run.json used a fixed run.json.tmp name: two comparisons sharing a run folder
    clobbered (or lost) each other's temporary file."""
    from objguided_d2.comparison.records import RUN_META, write_run_meta

    metas = [{"key": k * 64, "command": k * 5000, "finished": False} for k in "ab"]
    barrier = threading.Barrier(2)
    errors = []

    def writer(meta):
        barrier.wait()
        try:
            for _ in range(200):
                write_run_meta(str(tmp_path), meta)
                with open(tmp_path / RUN_META) as f:
                    assert json.load(f) in metas
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(m,)) for m in metas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:2]
    assert json.loads((tmp_path / RUN_META).read_text()) in metas
    assert os.listdir(tmp_path) == [RUN_META]  # no temporary file left


def test_plain_checkpoint_still_loads_weights_only(tmp_path):
    src = nn.Linear(3, 1)
    ObjGuidedCheckpointer(src, str(tmp_path)).save("model_final")
    dst = nn.Linear(3, 1)
    ObjGuidedCheckpointer(dst).load(str(tmp_path / "model_final.pth"))
    assert torch.equal(dst.weight, src.weight)
