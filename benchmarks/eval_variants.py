#!/usr/bin/env python
"""Test-time ablation rows: evaluate trained runs of a comparison folder again under other
test-time options, reusing their weights (evaluation only, no training).

Each run is evaluated as the comparison evaluates it (``python -m objguided_d2.comparison.worker``
on the run's own ``config.yaml``, i.e. the trained config with the comparison protocol's
options), once per ``--variant NAME KEY VALUE [KEY VALUE ...]`` with those config keys changed
(``--variant base`` with no keys is the run as trained). Prints (and with --output writes) a
markdown table of APseg / APseg@.5 / APseg@.75 / APdec / COCO segm AP per run and variant, and
the difference from the first variant; each evaluation is kept under
``<compare_dir>/variants/<run>/<variant>/`` and reused when its options are unchanged.

    python benchmarks/eval_variants.py out/boxes_nuclei_seed0 --dataset-name synth_nuclei_paperscale \\
        --methods objguided_R18_tiny_plus --threads 1 \\
        --variant base \\
        --variant follow_mask MODEL.OBJGUIDED.RECROP_FOLLOW_MASK_TEST 0.1 MODEL.OBJGUIDED.RECROP_ROUNDS_TEST 2 \\
        --variant rescore MODEL.OBJGUIDED.MASK_RESCORE_TEST True \\
        --output out/boxes_nuclei_seed0/test_time_rows.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This checkout's package first, not another one installed in the same environment (a study worktree).
sys.path.insert(0, ROOT)

METRICS = (("APseg", "paper", "APseg"), ("APseg@.5", "paper", "APseg50"), ("APseg@.75", "paper", "APseg75"),
           ("APdec", "paper", "APdec"), ("segm AP", "segm", "AP"))


def get_parser() -> argparse.ArgumentParser:
    from objguided_d2.comparison.runs import add_compare_dir_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compare_dir_arguments(p)
    p.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY VALUE]",
                   help="a name and the config keys it changes (repeatable; the first is the reference)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the evaluations (0: default)")
    p.add_argument("--output", default=None, help="markdown file to write (a .json beside it)")
    return p


def parse_variants(raw: Sequence[Sequence[str]]) -> Dict[str, List[str]]:
    """``--variant`` values -> {name: [KEY, VALUE, ...]}; raises ValueError naming the problem."""
    out: Dict[str, List[str]] = {}
    for v in raw:
        name, opts = v[0], list(v[1:])
        if "/" in name or name.startswith(".") or name in out:
            raise ValueError(f"--variant {name!r}: expected a new name without '/'")
        if len(opts) % 2:
            raise ValueError(f"--variant {name}: expected KEY VALUE pairs, got {len(opts)} items")
        out[name] = opts
    return out


def evaluate(run_dir: str, test_name: str, specs: Sequence[str], opts: Sequence[str], out_dir: str,
             threads: int) -> Dict:
    """eval.json of the run under ``opts`` (reused when written with the same command)."""
    cmd = [sys.executable, "-m", "objguided_d2.comparison.worker",
           "--config-file", os.path.join(run_dir, "config.yaml"),
           "--weights", os.path.join(run_dir, "model_final.pth"), "--test-dataset", test_name,
           "--output", out_dir, "--speed-images", "1", "--warmup", "0", "--repeats", "1",
           "--vis-images", "0", "--threads", str(threads),
           *[a for s in specs for a in ("--dataset", s)],
           *opts, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", out_dir]
    key_path, eval_path = os.path.join(out_dir, "variant.json"), os.path.join(out_dir, "eval.json")
    key = {"command": cmd[1:], "weights_mtime": os.path.getmtime(os.path.join(run_dir, "model_final.pth"))}
    if os.path.exists(eval_path) and os.path.exists(key_path):
        with open(key_path) as f:
            if json.load(f) == key:
                with open(eval_path) as g:
                    return json.load(g)
    os.makedirs(out_dir, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(os.path.join(out_dir, "console.txt"), "w") as console:
        rc = subprocess.call(cmd, stdout=console, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if rc != 0 or not os.path.exists(eval_path):
        raise RuntimeError(f"evaluation failed (exit {rc}); see {os.path.join(out_dir, 'console.txt')}")
    with open(key_path, "w") as f:
        json.dump(key, f)
    with open(eval_path) as f:
        return json.load(f)


def metric(ev: Dict, group: str, key: str) -> Optional[float]:
    v = ((ev.get("results") or {}).get(group) or {}).get(key)
    return None if v is None else float(v)


def table(results: Dict[str, Dict[str, Dict]], names: Sequence[str]) -> str:
    """Markdown: one row per run and variant, each metric with its difference from the first variant."""
    head = "| run | variant | " + " | ".join(m[0] for m in METRICS) + " |"
    lines = [head, "|" + ":---|" * 2 + "---:|" * len(METRICS)]
    for run, evs in results.items():
        ref = evs[names[0]]
        for name in names:
            cells = []
            for _, group, key in METRICS:
                v, r = metric(evs[name], group, key), metric(ref, group, key)
                if v is None:
                    cells.append("-")
                elif name == names[0] or r is None:
                    cells.append(f"{v:.2f}")
                else:
                    cells.append(f"{v:.2f} ({v - r:+.2f})")
            lines.append(f"| {run} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    from objguided_d2.comparison.runs import open_compare_dir, write_report

    args = get_parser().parse_args(argv)
    try:
        variants = parse_variants(args.variant)
    except ValueError as e:
        print(f"eval_variants.py: error: {e}", file=sys.stderr)
        return 2
    test_name, runs_dir, runs = open_compare_dir(args)
    results: Dict[str, Dict[str, Dict]] = {}
    for run in runs:
        results[run] = {}
        for name, opts in variants.items():
            out = os.path.join(args.compare_dir, "variants", run, name)
            print(f"{run} / {name}: evaluating ...", file=sys.stderr)
            try:
                results[run][name] = evaluate(os.path.join(runs_dir, run), test_name, args.dataset, opts,
                                              out, args.threads)
            except RuntimeError as e:
                print(f"eval_variants.py: error: {run} / {name}: {e}", file=sys.stderr)
                return 1
    text = table(results, list(variants))
    print(text)
    if args.output:
        write_report(args.output, text, {
            "variants": variants, "test_dataset": test_name,
            "results": {r: {n: {m[0]: metric(ev, m[1], m[2]) for m in METRICS} for n, ev in evs.items()}
                        for r, evs in results.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
