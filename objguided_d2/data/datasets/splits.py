"""Train / val / test splits of a dataset's sample keys.

Split files: ``PATH/splits.json`` (``{"train": [keys], "val": [...], "test": [...]}``) or
``PATH/train.txt`` / ``val.txt`` / ``test.txt`` (one key per line, ``#`` comments) when present,
or the file given by the ``splits`` option; otherwise a seeded random 60/20/20 split
(:func:`seeded_split`). Samples listed in no split file are unused.

Containment: a split-file entry that points outside the dataset root (``../other/a.png``, an
absolute path elsewhere) is refused with a DataError naming the file; names are resolved
lexically against the root (``a/../b.png`` is ``b.png``).
"""
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from objguided_d2.utils.io import path_inside

from ..io import DataError, is_image_name

__all__ = ["SPLITS", "resolve_splits", "seeded_split"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def seeded_split(
    keys: Sequence[str], seed: int, ratios: Tuple[float, float, float] = (0.6, 0.2, 0.2)
) -> Dict[str, List[str]]:
    """Random train/val/test split of ``keys``, reproducible from ``seed``.

    ``n_train = round(r0 * n)``, ``n_val = round(r1 * n)``, test gets the rest (so 670 DSB2018
    images give the paper's 402/134/134, 473 CVPPP images 284/95/94, 644 neural 386/129/129).
    Each split is returned sorted.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split ratios must be three non-negative numbers, got {ratios}")
    total = float(sum(ratios))
    keys = sorted(keys)
    n = len(keys)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(ratios[0] / total * n))
    n_val = min(n - n_train, int(round(ratios[1] / total * n)))
    shuffled = [keys[i] for i in perm]
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def _read_split_file(path: str) -> Dict[str, List[str]]:
    if path.lower().endswith(".json"):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read split file ({e})") from e
        if not isinstance(data, dict) or not set(data) <= set(SPLITS) or not all(
            isinstance(v, list) and all(isinstance(k, str) for k in v) for v in data.values()
        ):
            raise DataError(f'{path}: expected {{"train": [keys], "val": [keys], "test": [keys]}}')
        return {s: list(data.get(s, [])) for s in SPLITS}
    raise DataError(f"{path}: split file must be a .json file or a folder with train.txt/val.txt/test.txt")


def _read_txt_splits(folder: str) -> Dict[str, List[str]]:
    out = {}
    for s in SPLITS:
        p = os.path.join(folder, f"{s}.txt")
        keys = []
        if os.path.isfile(p):
            with open(p) as f:
                for line in f:
                    line = line.split("#", 1)[0].strip()
                    if line:
                        keys.append(line)
        out[s] = keys
    return out


def _find_split_source(root: str, splits: Optional[str]) -> Optional[str]:
    if splits:
        if not os.path.exists(splits):
            raise DataError(f"{splits}: split file not found")
        return os.path.abspath(splits)
    if os.path.isfile(os.path.join(root, "splits.json")):
        return os.path.join(root, "splits.json")
    if any(os.path.isfile(os.path.join(root, f"{s}.txt")) for s in SPLITS):
        return root
    return None


def resolve_splits(
    keys: Sequence[str],
    root: str,
    *,
    splits: Optional[str] = None,
    seed: int = 0,
    ratios: Tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> Dict[str, List[str]]:
    """Assign sample keys to train/val/test (see the module docstring for the rules)."""
    src = _find_split_source(root, splits)
    if src is None:
        return seeded_split(keys, seed, ratios)
    listed = _read_txt_splits(src) if os.path.isdir(src) else _read_split_file(src)
    by_base: Dict[str, List[str]] = {}
    for k in keys:
        by_base.setdefault(k.rsplit("/", 1)[-1], []).append(k)
    key_set, seen, out = set(keys), {}, {}
    for s in SPLITS:
        out[s] = []
        for entry in listed[s]:
            if path_inside(root, entry) is None:
                where = src if os.path.isfile(src) else os.path.join(src, f"{s}.txt")
                raise DataError(f"{where}: {s} entry {entry!r} points outside the dataset root {root}; entries are "
                                "sample keys or file names relative to it")
            k = entry if entry in key_set else None
            if k is None:
                # Allow file names / bare stems in split files, as long as they are unambiguous.
                e = os.path.splitext(entry)[0] if is_image_name(entry) else entry
                e = e[: -len("_rgb")] if e.endswith("_rgb") else e  # a CVPPP image name
                cands = [e] if e in key_set else by_base.get(e, [])
                if len(cands) != 1:
                    where = src if os.path.isfile(src) else os.path.join(src, f"{s}.txt")
                    why = "matches no sample" if not cands else f"is ambiguous ({cands})"
                    raise DataError(f"{where}: {s} entry {entry!r} {why}")
                k = cands[0]
            if k in seen:
                raise DataError(f"{src}: sample {k!r} listed in both {seen[k]} and {s}")
            seen[k] = s
            out[s].append(k)
    unused = len(key_set) - len(seen)
    if unused:
        logger.info(f"{src}: {unused} samples are in no split and are not used")
    return out
