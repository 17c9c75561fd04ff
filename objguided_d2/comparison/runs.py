"""Reading a finished ``tools/compare.py`` folder: its test dataset and its trained runs (used by the
diagnostics in ``benchmarks/``: ``oracle_boxes.py``, ``learning_curve.py``)."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

__all__ = ["add_compare_dir_arguments", "DatasetNotFound", "resolve_dataset", "dataset_from_args", "finished_runs",
           "run_name", "open_compare_dir", "write_report", "load_run"]


def add_compare_dir_arguments(parser, methods_help: str = "run folder names (default: every finished run)") -> None:
    """The arguments every diagnostic of a comparison folder takes: the folder, the test dataset
    (``--dataset`` specs, ``--dataset-name``, ``--split``) and ``--methods``."""
    parser.add_argument("compare_dir", help="a tools/compare.py output folder (its runs/<method>/ are read)")
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=FORMAT:PATH",
                        help="dataset spec to register (as given to compare.py)")
    parser.add_argument("--dataset-name", default=None, help="base name: <NAME>_<split> is evaluated")
    parser.add_argument("--split", default="test", help="split evaluated (default test)")
    parser.add_argument("--methods", nargs="+", default=None, help=methods_help)


class DatasetNotFound(ValueError):
    """No test dataset: ``name`` is the dataset looked for (None when no base name was given)."""

    def __init__(self, name: Optional[str]):
        self.name = name
        super().__init__(f"dataset {name!r} is not registered" if name else "no dataset name or spec given")


def resolve_dataset(specs: Sequence[str], dataset_name: Optional[str], split: str) -> str:
    """Register ``specs`` (``NAME=FORMAT:PATH``) and return ``<base>_<split>``, the base being
    ``dataset_name`` or the last spec's name.

    Raises:
        DatasetNotFound: no base name, or the dataset is not registered.
    """
    from detectron2.data import DatasetCatalog

    import objguided_d2  # noqa: F401  (registers the embedded datasets)
    from objguided_d2.data.register import parse_dataset_spec, register_dataset_spec

    for spec in specs:
        register_dataset_spec(spec)
    base = dataset_name or (parse_dataset_spec(specs[-1])[0] if specs else None)
    if base is None:
        raise DatasetNotFound(None)
    dataset = f"{base}_{split}"
    if dataset not in DatasetCatalog.list():
        raise DatasetNotFound(dataset)
    return dataset


def dataset_from_args(args) -> str:
    """:func:`resolve_dataset` of the arguments of :func:`add_compare_dir_arguments`.

    Raises:
        ValueError: naming the flags that give the dataset.
    """
    try:
        return resolve_dataset(args.dataset, args.dataset_name, args.split)
    except DatasetNotFound as e:
        if e.name is None:
            raise ValueError("give --dataset-name or --dataset NAME=FORMAT:PATH") from None
        raise ValueError(f"{e}; give --dataset NAME=FORMAT:PATH") from None


def finished_runs(compare_dir: str, methods: Optional[Sequence[str]] = None,
                  required: Sequence[str] = ("config.yaml", "model_final.pth"),
                  hint: str = "train it with tools/compare.py first") -> Tuple[str, List[str]]:
    """``(DIR/runs, run ids)``: the given ids, or every run holding all the ``required`` files (by
    default a trained model and its config; ``benchmarks/error_breakdown.py`` asks for the saved
    predictions instead, which archived runs keep), in the comparison's order.

    Raises:
        ValueError: ``compare_dir`` has no ``runs/`` folder, a given run lacks a required file
            (the message ends with ``hint``), or no run has them all.
    """
    runs_dir = os.path.join(compare_dir, "runs")
    if not os.path.isdir(runs_dir):
        raise ValueError(f"{runs_dir}: not a tools/compare.py output folder (no runs/)")

    def missing(run_id: str) -> List[str]:
        return [p for p in (os.path.join(runs_dir, run_id, f) for f in required) if not os.path.isfile(p)]

    if methods:
        for m in methods:
            absent = missing(m)
            if absent:
                raise ValueError(f"{m}: {absent[0]} not found ({hint})")
        return runs_dir, list(methods)
    ids = compare_order(runs_dir, [d for d in os.listdir(runs_dir) if not missing(d)])
    if not ids:
        raise ValueError(f"{runs_dir}: no finished run (none has {', '.join(required)})")
    return runs_dir, ids


def compare_order(runs_dir: str, run_ids: Sequence[str]) -> List[str]:
    """``run_ids`` in the order of the comparison's table (``results.json`` beside ``runs_dir``),
    so that every report lists the methods as the comparison does; ids it does not name follow,
    sorted."""
    from .records import read_record

    results = read_record(os.path.join(os.path.dirname(os.path.abspath(runs_dir)), "results.json"))
    order = [m.get("id") for m in results.get("methods", []) if isinstance(m, dict)]
    rank = {rid: i for i, rid in enumerate(order)}
    return sorted(run_ids, key=lambda r: (rank.get(r, len(rank)), r))


def run_name(runs_dir: str, run_id: str) -> str:
    """The table name of a run: the one ``tools/compare.py`` gave it (``NAME=PATH``, e.g. "Ours+",
    whose folder is ``runs/Ours``), from the folder's ``results.json``; else from its config file
    (``compare_run.json``); else from the run id."""
    from .presets import display_name
    from .records import RUN_META, read_record

    results = read_record(os.path.join(os.path.dirname(os.path.abspath(runs_dir)), "results.json"))
    for m in results.get("methods", []):
        if isinstance(m, dict) and m.get("id") == run_id and m.get("name"):
            return str(m["name"])
    config_file = read_record(os.path.join(runs_dir, run_id, RUN_META)).get("config_file")
    if config_file:
        return display_name(str(config_file))
    return display_name(run_id)


def open_compare_dir(args) -> Tuple[str, str, List[str]]:
    """A diagnostic's common start from its parsed arguments (``threads``, ``dataset``,
    ``dataset_name``, ``split``, ``compare_dir``, ``methods``): sets the torch threads and returns
    ``(test dataset, runs dir, run ids)``; exits with the message on a bad argument."""
    import sys

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dataset = dataset_from_args(args)
        runs_dir, ids = finished_runs(args.compare_dir, args.methods)
    except ValueError as e:
        sys.exit(str(e))
    return dataset, runs_dir, ids


def write_report(path: str, text: str, data) -> None:
    """A diagnostic's markdown ``text`` to ``path`` and its numbers (``data``) as JSON beside it."""
    from objguided_d2.utils.io import atomic_write, write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(text + "\n"), mode="w", overwrite=True)
    write_json(os.path.splitext(path)[0] + ".json", data, sort_keys=True, compact=True, overwrite=True)


def load_run(run_dir: str, opts=(), *, trust_pickle: bool = False, weights: Optional[str] = None):
    """``(cfg, model)`` of a trained run for a diagnostic: ``run_dir/config.yaml`` through the one
    config loader (``opts`` after it), the model built and put in eval mode, ``weights`` (if given)
    loaded through the one weight loader. Exits with one line naming the file when the config or
    the weights are refused."""
    import sys

    from objguided_d2.config import ConfigError, load_config
    from objguided_d2.engine.checkpoint import ObjGuidedCheckpointer
    from objguided_d2.engine.safe_load import UntrustedFileError
    from objguided_d2.engine.trainer import Trainer

    try:
        cfg = load_config(os.path.join(run_dir, "config.yaml"), list(opts))
        model = Trainer.build_model(cfg)
        if weights:
            ObjGuidedCheckpointer(model, trust_pickle=trust_pickle).load(weights)
    except (ConfigError, UntrustedFileError) as e:
        sys.exit(f"{type(e).__name__}: {e}")
    model.eval()
    return cfg, model
