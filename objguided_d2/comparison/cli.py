"""Side-by-side comparison of objguided-d2 with Mask R-CNN and PointRend (the paper's Table I,
Fig. 4 and Fig. 5) under one shared training budget.

Usage::

    python tools/compare.py --preset demo --output demo_output          # `make demo`, ~10 min on 2 CPUs
    python tools/compare.py --preset paper-cpu --output out/paper_cpu   # tiny models, full 256-px data
    python tools/compare.py --preset paper-gpu --device cuda --output out/paper_gpu   # ResNet-50, 512 px
    python tools/compare.py --dataset-name synth_leaves_tiny --iters 200 --batch 2 --input-size 128 \\
        --output out/leaves
    python tools/compare.py --dataset 'cells=labelfolder:/data/cells' \\
        --configs configs/tiny/objguided_R18_tiny.yaml configs/tiny/mask_rcnn_R18_tiny.yaml \\
        --iters 1000 --output out/cells --opts SOLVER.BASE_LR 0.0005

Options (a preset fills in what is not given; without one, the ``demo`` values are used):

  --preset {demo,paper-cpu,paper-gpu}
  --dataset-name NAME       embedded/registered base name: NAME_train is trained on, NAME_test
                            (``--test-split``) evaluated, e.g. synth_neural_tiny, synth_leaves
  --dataset NAME=FORMAT:PATH  register your own data (repeatable, as in tools/train_net.py);
                            NAME becomes the dataset unless --dataset-name says otherwise
  --configs [NAME=]CFG ...  the methods (default: ours, ours w/o refine, Mask R-CNN, PointRend)
  --iters N --batch B --input-size S --seed K
                            the ONE budget of every method: SOLVER.MAX_ITER, SOLVER.IMS_PER_BATCH,
                            INPUT.TRAIN_SIZE = INPUT.MIN_SIZE_TEST = INPUT.MAX_SIZE_TEST (0: the
                            configs' own sizes), SEED
  --device cpu|cuda         MODEL.DEVICE for training, evaluation and timing
  --threads N               torch/OpenMP threads of every subprocess (0: torch's default)
  --jobs N                  methods trained / evaluated at once (default 1): on a CPU machine one
                            per core with --threads 1; with --device cuda one per GPU (job i sees
                            GPU i only). Speed (FPS) is then measured beside other jobs.
  --output DIR              where everything goes (runs/<method>/ holds each training)
  --retrain / --reeval      train / evaluate again even when a finished run / evaluation exists
  --speed-images N --warmup W --repeats R    timing: median of R passes over N test images
  --vis-images K --vis-score T               qualitative.png: K test images, masks with score >= T
                            (default best-f1: each method at its own F1-best cutoff, in its column title)
  --opts KEY VALUE ...      config overrides for every method (must come last)

Each method is trained by ``tools/train_net.py`` in its own subprocess (``DIR/runs/<method>/``:
Detectron2's ``log.txt`` and ``metrics.json``, the subprocess's stdout/stderr in ``console.txt``),
and a finished run (``model_final.pth`` with the same config contents, opts, budget, seed and data)
is reused rather than trained again. Every method is then evaluated by the same worker process
(:mod:`objguided_d2.comparison.worker`): COCO bbox/segm AP, the paper's APdec/APseg, the challenge
metrics, inference speed (same N images, warm-up, median of repeats, device and thread count
recorded) and parameter count.

Output in DIR: ``table.md``, ``table.csv`` (Table I + COCO AP + challenge metrics),
``curves.png`` (training loss against iteration per method from each run's ``metrics.json``;
APseg at the checkpoints evaluated by ``benchmarks/learning_curve.py --output
DIR/learning_curve.md`` or with ``TEST.EVAL_PERIOD``), ``ap_vs_iou.png`` (Fig. 5),
``qualitative.png`` (Fig. 4: input, ground truth and each method's
masks, with an enlarged crop of the region with the most ground-truth boundary pixels),
``results.json`` (everything) and ``reproduce.md`` (commands, config SHA-256s, versions, machine).

A method that fails is reported as FAILED (reason and log path) while the others finish; the exit
code is then 1. The table is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from objguided_d2.config import config_chain

from .presets import PRESETS, REPO_ROOT, Method, MethodSpecError, parse_methods
from .records import file_sha256
from .runner import ARCHIVED_NO_REEVAL, MethodResult, MethodRunner
from .settings import BEST_F1, Budget, EvalSettings, SettingError, vis_score_arg

__all__ = ["get_parser", "main"]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/compare.py",
        description="Train and evaluate ours, ours w/o refine, Mask R-CNN and PointRend side by side.",
        epilog="Full usage: see the docstring of objguided_d2/comparison/cli.py.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="dataset, configs and budget preset")
    p.add_argument("--dataset-name", default=None, help="base name: <NAME>_train / <NAME>_test are used")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=FORMAT:PATH",
                   help="register your own data (repeatable); see objguided_d2/data/register.py")
    p.add_argument("--test-split", default="test", choices=["test", "val"], help="split evaluated (default test)")
    p.add_argument("--configs", nargs="+", default=None, metavar="[NAME=]CONFIG", help="the methods' config files")
    p.add_argument("--iters", type=int, default=None, help="SOLVER.MAX_ITER of every method")
    p.add_argument("--batch", type=int, default=None, help="SOLVER.IMS_PER_BATCH of every method")
    p.add_argument("--input-size", type=int, default=None,
                   help="INPUT.TRAIN_SIZE / MIN_SIZE_TEST / MAX_SIZE_TEST of every method (0: configs' own)")
    p.add_argument("--seed", type=int, default=0, help="Detectron2 SEED of every method (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the subprocesses (0: default)")
    p.add_argument("--jobs", type=int, default=1, help="methods trained and evaluated at once (default 1)")
    p.add_argument("--output", default="compare_output", help="output folder (default compare_output)")
    p.add_argument("--retrain", action="store_true", help="train again even if a finished run exists")
    p.add_argument("--reeval", action="store_true", help="evaluate again even if a valid evaluation exists")
    p.add_argument("--speed-images", type=int, default=10, help="test images timed (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the median is reported (default 3)")
    p.add_argument("--vis-images", type=int, default=3, help="test images in qualitative.png (default 3)")
    p.add_argument("--vis-score", type=vis_score_arg, default=BEST_F1,
                   help=f"score threshold of drawn masks, or {BEST_F1!r} (default): each method at its own "
                   "cutoff of highest F1 at mask IoU 0.5 on the test split")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides for every method")
    return p


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_ground_truth(test_name: str, n: int):
    """The first ``n`` test images (RGB uint8) and their GT label maps, as the worker sees them."""
    from detectron2.data import DatasetCatalog
    from pycocotools import mask as mask_util

    from objguided_d2.data.io import read_image
    from objguided_d2.evaluation import gt_instances_from_dict

    records = DatasetCatalog.get(test_name)[:n]
    images, gts, titles = [], [], []
    for r in records:
        img = read_image(r["file_name"])[:, :, ::-1]
        g = gt_instances_from_dict(r)
        h, w = int(r["height"]), int(r["width"])
        label = np.zeros((h, w), dtype=np.int32)
        for k, rle in enumerate(g.masks, start=1):
            label[mask_util.decode(rle).astype(bool)] = k
        images.append(np.ascontiguousarray(img))
        gts.append(label)
        titles.append(os.path.basename(r["file_name"]))
    return images, gts, titles


def _predictions_for_plot(results, n: int) -> Dict[str, List[Optional[np.ndarray]]]:
    preds = {}
    for r in results:
        maps: List[Optional[np.ndarray]] = [None] * n
        path = os.path.join(r.run_dir, "eval", "qualitative.npz")
        if r.ok and os.path.isfile(path):
            with np.load(path) as z:
                for i in range(n):
                    if str(i) in z.files:
                        maps[i] = z[str(i)]
        # The column says at which score the masks are drawn (each method's own, by default).
        thr = (r.eval or {}).get("vis_score")
        preds[f"{r.name}\nscore >= {thr:.2f}" if isinstance(thr, (int, float)) else r.name] = maps
    return preds


def _print_block(text: str) -> None:
    print(text, flush=True)


# The flag of each library setting (SettingError.name).
_FLAGS = {"iters": "--iters", "batch": "--batch", "input_size": "--input-size", "jobs": "--jobs"}


@dataclass
class _Plan:
    """What is compared, on what, with which budget (from the arguments and the preset)."""

    base: str
    train_name: str
    test_name: str
    methods: List[Method]
    budget: Budget
    settings: EvalSettings
    device: str
    opts: List[str]


def _plan(parser: argparse.ArgumentParser, args) -> _Plan:
    """Check every argument before anything is trained; a bad one exits with code 2."""
    import objguided_d2  # noqa: F401  (registers the embedded datasets)
    from detectron2.data import DatasetCatalog

    from objguided_d2.config import load_config
    from objguided_d2.data.register import parse_dataset_spec, register_dataset_spec

    preset = PRESETS[args.preset or "demo"]
    try:
        for spec in args.dataset:
            register_dataset_spec(spec)
        base = args.dataset_name or (parse_dataset_spec(args.dataset[-1])[0] if args.dataset else preset.dataset)
        train_name, test_name = f"{base}_train", f"{base}_{args.test_split}"
        registered = DatasetCatalog.list()
        for n in (train_name, test_name):
            if n not in registered:
                bases = sorted({x.rsplit("_", 1)[0] for x in registered if x.startswith("synth_") or x.endswith("_train")})
                raise ValueError(f"dataset {n!r} is not registered; give --dataset NAME=FORMAT:PATH or one of "
                                 f"--dataset-name {', '.join(bases)}")
        methods = parse_methods(args.configs or preset.configs)
        for m in methods:  # every method's config (and _BASE_ files) read safely, before any training
            # (only read here: --device decides the device, so no CUDA-fallback warning)
            load_config(m.config_file, allow_cuda_fallback=False)
        input_size = preset.input_size if args.input_size is None else (args.input_size or None)
        budget = Budget(
            iters=preset.iters if args.iters is None else args.iters,
            batch=preset.batch if args.batch is None else args.batch,
            input_size=input_size,
            seed=args.seed,
        )
        settings = EvalSettings(speed_images=args.speed_images, warmup=args.warmup, repeats=args.repeats,
                                vis_images=args.vis_images, vis_score=args.vis_score)
        if min(settings.speed_images, settings.repeats) < 1 or settings.warmup < 0 or settings.vis_images < 0:
            raise ValueError("--speed-images and --repeats must be >= 1, --warmup and --vis-images >= 0")
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        device = args.device or _default_device()
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    except SettingError as e:
        parser.error(f"{_FLAGS.get(e.name, e.name)} {e.problem}")  # exits with code 2
    except MethodSpecError as e:
        parser.error(f"--configs: {e}")
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    opts = list(preset.opts if args.preset else ()) + list(args.opts or [])  # --opts last: they win
    if len(opts) % 2:
        parser.error(f"--opts needs KEY VALUE pairs, got {len(opts)} items: {opts}")
    return _Plan(base, train_name, test_name, methods, budget, settings, device, opts)


def _write_figures(results: Sequence[MethodResult], plan: _Plan,
                   out: str) -> Tuple[Dict[str, str], List, List[str]]:
    """``ap_vs_iou.png``, ``curves.png``, ``qualitative.png``: ``(files written, crop windows,
    errors)``; a failing figure is reported, never loses the table."""
    from . import plots
    from .progress import read_metrics

    files, windows, errors = {}, [], []
    curves = {}
    for r in results:
        c = (r.eval.get("curves") or {}) if r.ok else {}
        curves[r.name] = (c["iou_thresholds"], c["APseg_curve"]) if c.get("APseg_curve") else None
    try:
        plots.plot_ap_vs_iou(curves, os.path.join(out, "ap_vs_iou.png"),
                             title=f"APseg vs IoU threshold on {plan.test_name}")
        files["ap_vs_iou"] = "ap_vs_iou.png"
    except Exception as e:  # noqa: BLE001  (a figure must not lose the table)
        errors.append(f"ap_vs_iou.png: {type(e).__name__}: {e}")
        traceback.print_exc()
    try:  # curves.png: loss per iteration and APseg at evaluated checkpoints (learning_curve.json)
        lc = os.path.join(out, "learning_curve.json")
        table = {}
        if os.path.isfile(lc):
            with open(lc) as f:
                table = json.load(f).get("table", {})
        extra = {r.name: {int(it) + 1: v.get("APseg") for it, v in table.get(os.path.basename(r.run_dir), {}).items()
                          if isinstance(v.get("APseg"), (int, float))} for r in results}
        plots.plot_training_curves({r.name: read_metrics(os.path.join(r.run_dir, "metrics.json")) for r in results},
                                   os.path.join(out, "curves.png"), extra_points=extra,
                                   title=f"Training curves ({plan.budget.iters} iterations)")
        files["curves"] = "curves.png"
    except Exception as e:  # noqa: BLE001
        errors.append(f"curves.png: {type(e).__name__}: {e}")
        traceback.print_exc()
    try:
        n_vis = plan.settings.vis_images
        if n_vis > 0:
            images, gts, titles = _load_ground_truth(plan.test_name, n_vis)
            preds = _predictions_for_plot(results, len(images))
            windows = plots.plot_qualitative(images, gts, preds, os.path.join(out, "qualitative.png"), titles=titles)
            files["qualitative"] = "qualitative.png"
    except Exception as e:  # noqa: BLE001
        errors.append(f"qualitative.png: {type(e).__name__}: {e}")
        traceback.print_exc()
    return files, windows, errors


def _failure(r: MethodResult) -> str:
    """One failed method for the summary, naming the flag that helps where there is one."""
    hint = "; use --retrain" if r.reason == ARCHIVED_NO_REEVAL else ""
    return f"{r.name} ({r.stage}: {r.reason}{hint}; log {r.log})"


def _notes(plan: _Plan, size_str: str, env: Dict, results: Sequence[MethodResult]) -> List[str]:
    """The notes under the table: data, budget, what the AP columns mean, how FPS was timed."""
    budget, settings = plan.budget, plan.settings
    speed_env = next((r.eval.get("speed") for r in results if r.ok and r.eval.get("speed")), {})
    return [
        f"Dataset: train `{plan.train_name}`, evaluated on `{plan.test_name}`. Shared budget: {budget.iters} "
        f"iterations, batch {budget.batch}, input {size_str}, seed {budget.seed}.",
        "AP in percent: APdec / APseg are the paper's VOC-style AP averaged over IoU 0.50:0.05:0.95 "
        "(results.json has every threshold); APdec scores the box of each final mask (the authors' evaluation), "
        "APdec (det box) the detector's own box; COCO AP from pycocotools; SEG, DET F1, bestDice, FgBgDice in percent; "
        "absDiffFG (mean |DiffFG|) in objects per image.",
        f"FPS: {speed_env.get('num_images', settings.speed_images)} test images, one per call, "
        f"{settings.warmup} warm-up calls, median of {settings.repeats} passes, on "
        f"{speed_env.get('device_name', env['device_name'])} ({speed_env.get('device', plan.device)}) with "
        f"{speed_env.get('torch_threads', env['torch_threads'])} torch threads.",
    ]


def _settings_record(args, plan: _Plan) -> Dict:
    """The settings recorded in ``results.json`` and ``reproduce.md``."""
    budget, settings = plan.budget, plan.settings
    return {
        "preset": args.preset, "train": plan.train_name, "test": plan.test_name, "datasets": args.dataset,
        "iters": budget.iters, "batch": budget.batch, "input_size": budget.input_size, "seed": budget.seed,
        "device": plan.device, "threads": args.threads, "jobs": args.jobs, "opts": plan.opts, "retrain": args.retrain,
        "speed_images": settings.speed_images, "warmup": settings.warmup, "repeats": settings.repeats,
        "vis_images": settings.vis_images, "vis_score": settings.vis_score,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    t_start = time.time()
    plan = _plan(parser, args)
    budget, methods = plan.budget, plan.methods

    from . import report

    out = os.path.abspath(args.output)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    print(f"Comparing {len(methods)} methods on {plan.train_name} -> {plan.test_name}: {budget.iters} iterations, "
          f"batch {budget.batch}, input {budget.input_size or 'configs'} px, seed {budget.seed}, "
          f"device {plan.device}; output {out}", flush=True)
    for m in methods:
        print(f"  - {m.name}: {os.path.relpath(m.config_file, REPO_ROOT)} -> runs/{m.id}", flush=True)

    runner = MethodRunner(
        out, budget=budget, datasets=args.dataset, train_name=plan.train_name, test_name=plan.test_name,
        device=plan.device, user_opts=plan.opts, eval_settings=plan.settings, threads=args.threads, jobs=args.jobs,
        retrain=args.retrain, reeval=args.reeval,
    )
    results = runner.run(methods)
    reused = [r.name for r in results if r.reused]
    if reused:
        print(f"Reused the finished runs of {', '.join(reused)} (--retrain trains them again)", flush=True)

    # ----- report
    size_str = f"{budget.input_size}x{budget.input_size}" if budget.input_size else "configs'"
    rows = report.table_rows(results, size_str, out)
    env = report.environment_info(plan.device, args.threads)
    table_text = report.write_table_md(rows, os.path.join(out, "table.md"),
                                       title=f"# Comparison on {plan.base} ({plan.test_name})",
                                       notes=_notes(plan, size_str, env, results))
    report.write_table_csv(rows, os.path.join(out, "table.csv"))
    files = {"table_md": "table.md", "table_csv": "table.csv"}
    figures, windows, report_errors = _write_figures(results, plan, out)
    files.update(figures)

    command = shlex.join([sys.executable, "tools/compare.py", *(argv if argv is not None else sys.argv[1:])])
    config_hashes = {
        m.name: [(os.path.relpath(p, REPO_ROOT), file_sha256(p)) for p in config_chain(m.config_file)] for m in methods
    }
    settings_dict = _settings_record(args, plan)
    report.write_reproduce_md(os.path.join(out, "reproduce.md"), command=command, env=env, methods=results,
                              config_hashes=config_hashes, settings=settings_dict)
    files["reproduce"] = "reproduce.md"
    files["results"] = "results.json"
    report.write_results_json(os.path.join(out, "results.json"), {
        "command": command,
        "settings": settings_dict,
        "environment": env,
        "table": rows,
        "methods": [r.to_dict() for r in results],
        "qualitative_crop_windows_yxyx": windows,
        "files": files,
        "report_errors": report_errors,
        "wall_seconds": time.time() - t_start,
    })

    print("\n" + table_text, flush=True)
    failed = [r for r in results if not r.ok]
    print(f"Wrote {', '.join(files.values())} to {out} in {time.time() - t_start:.0f} s.", flush=True)
    if failed:
        print(f"{len(failed)} of {len(results)} methods FAILED: " + "; ".join(_failure(r) for r in failed), flush=True)
    for e in report_errors:
        print(f"report error: {e}", flush=True)
    return 1 if failed or report_errors else 0
