"""Folder formats -> COCO JSON: what every format shares."""
import pytest

from objguided_d2.data.datasets.convert import convert_to_coco
from objguided_d2.data.io import DataError


def test_empty_and_missing_folders(tmp_path):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    with pytest.raises(DataError, match="no image files") as e:
        convert_to_coco("labelfolder", str(root))
    assert str(root / "images") in str(e.value)
    with pytest.raises(DataError, match="not found"):
        convert_to_coco("labelfolder", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no DSB2018"):
        convert_to_coco("dsb2018", str(root / "labels"))
    with pytest.raises(DataError, match="no CVPPP"):
        convert_to_coco("cvppp", str(root))


def test_unknown_format_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown format 'tiff'; expected one of \('labelfolder', 'dsb2018', 'cvppp'\)"):
        convert_to_coco("tiff", str(tmp_path))
