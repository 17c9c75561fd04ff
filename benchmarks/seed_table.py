#!/usr/bin/env python
"""One table over several seeds: the mean and every seed's value per method and metric.

Each argument is a finished ``tools/compare.py`` folder of the same comparison run with another
``--seed`` (its ``results.json``); methods are matched by their run id. A method missing or
failed in one folder shows ``-`` for that seed and its mean is left out.

    python benchmarks/seed_table.py out/paperscale/leaves_seed0 out/paperscale/leaves_seed1 \
        --output out/paperscale/leaves_seeds.md

``--targets margins`` (neural cells, leaves) or ``--targets level`` (nuclei) adds the paper's
targets checked on APseg, for the mean and for every seed; methods are matched by their compare
name (Ours, Ours w/o refine, Ours+, Mask R-CNN, PointRend).
"""
import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional

# (results.json section, key, header)
METRICS = [
    ("paper", "APseg", "APseg"),
    ("paper", "APseg50", "APseg@.5"),
    ("paper", "APseg75", "APseg@.75"),
    ("paper", "APdec", "APdec"),
    ("paper", "APdec_det", "APdec (det box)"),
    ("segm", "AP", "COCO mask AP"),
    ("paper", "DET_recall", "DET recall"),
    ("paper", "DET_precision", "DET precision"),
]

# The paper's targets on APseg: (label, candidates (the best one present counts), reference, margin).
_OURS_REFINE = ("Ours >= Ours w/o refine", ("Ours",), "Ours w/o refine", 0.0)
TARGETS = {
    # neural cells and leaves: ours well ahead of both baselines
    "margins": [
        ("Ours or Ours+ >= PointRend + 5", ("Ours", "Ours+"), "PointRend", 5.0),
        ("Ours or Ours+ >= Mask R-CNN + 10", ("Ours", "Ours+"), "Mask R-CNN", 10.0),
        _OURS_REFINE,
    ],
    # nuclei (DSB2018): ours level with PointRend
    "level": [("Ours or Ours+ >= PointRend", ("Ours", "Ours+"), "PointRend", 0.0), _OURS_REFINE],
}


def _value(method: Dict, section: str, key: str) -> Optional[float]:
    if method.get("status") != "ok":
        return None
    v = (((method.get("eval") or {}).get("results") or {}).get(section) or {}).get(key)
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def seed_rows(folders: List[str]) -> List[Dict]:
    """Per method (in the first folder's order, then new ones): name, per-seed values, means."""
    runs = []
    for d in folders:
        path = os.path.join(d, "results.json")
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: {path}: not a finished tools/compare.py folder ({e})")
        runs.append((res.get("settings", {}).get("seed"), {m["id"]: m for m in res.get("methods", [])}))
    order: List[str] = []
    for _, by_id in runs:
        order += [i for i in by_id if i not in order]
    rows = []
    for mid in order:
        name = next(by_id[mid]["name"] for _, by_id in runs if mid in by_id)
        row = {"id": mid, "method": name, "seeds": [s for s, _ in runs], "values": {}}
        for section, key, header in METRICS:
            vals = [_value(by_id[mid], section, key) if mid in by_id else None for _, by_id in runs]
            mean = sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None
            row["values"][header] = {"mean": mean, "seeds": vals}
        rows.append(row)
    return rows


def format_markdown(rows: List[Dict]) -> str:
    seeds = rows[0]["seeds"] if rows else []
    headers = [h for _, _, h in METRICS]
    out = [f"Mean over seeds {', '.join(str(s) for s in seeds)} (each seed's value in brackets).", "",
           "| Method | " + " | ".join(headers) + " |", "|:---|" + "---:|" * len(headers)]
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        cells = [f"{f(r['values'][h]['mean'])} ({' / '.join(f(v) for v in r['values'][h]['seeds'])})" for h in headers]
        out.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def check_targets(rows: List[Dict], kind: str) -> List[Dict]:
    """Each target of ``TARGETS[kind]`` on APseg, for the mean and every seed.

    Returns ``[{"target": label, "checks": [{"which": "mean"|seed, "ok": bool|None, "method": name,
    "value": v, "reference": r, "margin": v - r}, ...]}]``; ``ok`` is ``None`` where a value is missing.
    """
    by_name = {r["method"]: r["values"]["APseg"] for r in rows}
    seeds = rows[0]["seeds"] if rows else []
    # (column, APseg of a method in it): the mean, then seed by seed
    columns = [("mean", lambda name: by_name[name]["mean"])] + [
        (s, lambda name, i=i: by_name[name]["seeds"][i]) for i, s in enumerate(seeds)]
    out = []
    for label, candidates, ref_name, margin in TARGETS[kind]:
        checks = []
        for which, value_of in columns:
            ref = value_of(ref_name) if ref_name in by_name else None
            got = [(v, c) for c in candidates if c in by_name for v in [value_of(c)] if v is not None]
            check = {"which": which, "ok": None, "method": None, "value": None, "reference": ref, "margin": None}
            if got and ref is not None:
                value, name = max(got, key=lambda t: t[0])  # a tie keeps the first candidate (Ours)
                check.update(ok=value >= ref + margin, method=name, value=value, margin=value - ref)
            checks.append(check)
        out.append({"target": label, "checks": checks})
    return out


def format_targets(targets: List[Dict]) -> str:
    cols = [c["which"] for c in targets[0]["checks"]]
    out = ["", "The paper's targets on APseg (the better of Ours and Ours+ where both count):", "",
           "| Target | " + " | ".join("mean" if c == "mean" else f"seed {c}" for c in cols) + " |",
           "|:---|" + "---|" * len(cols)]
    for t in targets:
        cells = ["-" if c["ok"] is None else
                 f"{'**yes**' if c['ok'] else '**no**'}: {c['method']} {c['value']:.2f} vs "
                 f"{c['reference']:.2f} ({c['margin']:+.2f})" for c in t["checks"]]
        out.append(f"| {t['target']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="tools/compare.py output folders, one per seed")
    p.add_argument("--output", default=None, help="also write the table here (markdown)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--targets", choices=sorted(TARGETS), default=None,
                   help="also check the paper's targets: margins (neural cells, leaves) or level (nuclei)")
    a = p.parse_args(argv)
    rows = seed_rows(a.folders)
    text = format_markdown(rows)
    if a.targets:
        text += format_targets(check_targets(rows, a.targets))
    print(text, end="")
    if a.output:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from objguided_d2.utils.io import OutputExistsError, atomic_write

        try:
            atomic_write(a.output, lambda f: f.write(text), mode="w", overwrite=a.overwrite)
        except OutputExistsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
