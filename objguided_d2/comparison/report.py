"""The comparison's tables and records: ``table.md``, ``table.csv``, ``results.json``,
``reproduce.md``.

The table has the shape of the paper's Table I (dataset, method, input size, APdec, APseg,
APseg@.5, APseg@.75, FPS, params) followed by COCO's bbox / segm AP, AP50, AP75 and the challenge
metrics (SEG, DET F1, bestDice, FgBgDice, absDiffFG). AP values are percent (0-100); a method that
failed has status FAILED with the reason and the log to read, and empty metric cells.
"""
from __future__ import annotations

import csv
import datetime
import math
import os
import platform
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from objguided_d2.utils.io import write_json

from .presets import REPO_ROOT

__all__ = ["COLUMNS", "table_rows", "format_markdown", "write_table_md", "write_table_csv", "write_results_json",
           "write_reproduce_md", "environment_info"]

# (key in a row, header, decimals); metric rows come from results["paper"|"bbox"|"segm"].
COLUMNS: List[Tuple[str, str, Optional[int]]] = [
    ("method", "Method", None),
    ("input_size", "Input size", None),
    ("APdec", "APdec", 2),  # box of the final mask (the authors' evaluation)
    ("APdec_det", "APdec (det box)", 2),  # the detector's own box
    ("APseg", "APseg", 2),
    ("APseg50", "APseg@.5", 2),
    ("APseg75", "APseg@.75", 2),
    ("fps", "FPS", 2),
    ("params_m", "Params (M)", 2),
    ("bbox_AP", "COCO box AP", 2),
    ("bbox_AP50", "box AP50", 2),
    ("bbox_AP75", "box AP75", 2),
    ("segm_AP", "COCO mask AP", 2),
    ("segm_AP50", "mask AP50", 2),
    ("segm_AP75", "mask AP75", 2),
    ("SEG", "SEG", 2),
    ("DET_F1", "DET F1", 2),
    ("bestDice", "bestDice", 2),
    ("FgBgDice", "FgBgDice", 2),
    ("absDiffFG", "absDiffFG", 2),  # not "|DiffFG|": pipes break a markdown table
    ("status", "Status", None),
]
# Extra CSV-only columns.
CSV_EXTRA = ["id", "config_file", "reason", "log", "sec_per_image", "device", "torch_threads", "iters_per_sec"]


def _num(x) -> Optional[float]:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def table_rows(method_results: Sequence, input_size: str, output_dir: Optional[str] = None) -> List[Dict]:
    """One dict per method with every :data:`COLUMNS` key (None where unknown) + CSV extras.

    Log paths are relative to ``output_dir`` when they lie inside it."""
    rows = []
    for r in method_results:
        ev = r.eval or {}
        res = ev.get("results") or {}
        paper, bbox, segm = res.get("paper") or {}, res.get("bbox") or {}, res.get("segm") or {}
        speed = ev.get("speed") or {}
        row = {
            "method": r.name,
            "input_size": input_size,
            "APdec": _num(paper.get("APdec")),
            "APdec_det": _num(paper.get("APdec_det")),
            "APseg": _num(paper.get("APseg")),
            "APseg50": _num(paper.get("APseg50")),
            "APseg75": _num(paper.get("APseg75")),
            "fps": _num(speed.get("fps")),
            "params_m": _num(ev["params"] / 1e6) if ev.get("params") is not None else None,
            "bbox_AP": _num(bbox.get("AP")),
            "bbox_AP50": _num(bbox.get("AP50")),
            "bbox_AP75": _num(bbox.get("AP75")),
            "segm_AP": _num(segm.get("AP")),
            "segm_AP50": _num(segm.get("AP50")),
            "segm_AP75": _num(segm.get("AP75")),
            "SEG": _num(paper.get("SEG")),
            "DET_F1": _num(paper.get("DET_F1")),
            "bestDice": _num(paper.get("bestDice")),
            "FgBgDice": _num(paper.get("FgBgDice")),
            "absDiffFG": _num(paper.get("absDiffFG")),
            "status": "ok" if r.ok else "FAILED",
            "id": r.id,
            "config_file": os.path.relpath(r.config_file, REPO_ROOT) if r.config_file.startswith(REPO_ROOT) else r.config_file,
            "reason": "" if r.ok else f"{r.stage}: {r.reason}",
            "log": _rel(r.log, output_dir),
            "sec_per_image": _num(speed.get("sec_per_image")),
            "device": speed.get("device_name") or speed.get("device") or "",
            "torch_threads": speed.get("torch_threads"),
            "iters_per_sec": _num(r.iters_per_sec),
        }
        rows.append(row)
    return rows


def _rel(path: str, root: Optional[str]) -> str:
    if path and root and os.path.abspath(path).startswith(os.path.abspath(root) + os.sep):
        return os.path.relpath(path, root)
    return path


def _cell(row: Dict, key: str, decimals: Optional[int]) -> str:
    v = row.get(key)
    if decimals is None:
        return "" if v is None else str(v)
    if v is None:
        return "–" if row.get("status") == "ok" else ""
    return f"{v:.{decimals}f}"


def format_markdown(rows: Sequence[Dict], *, title: str = "") -> str:
    """A GitHub-markdown table of :data:`COLUMNS`; a failed method's status cell holds the
    reason and the log path."""
    head = [h for _, h, _ in COLUMNS]
    lines = []
    if title:
        lines += [title, ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(":---" if d is None else "---:" for _, _, d in COLUMNS) + "|")
    for row in rows:
        cells = [_cell(row, k, d) for k, _, d in COLUMNS]
        if row.get("status") != "ok":
            cells[-1] = f"FAILED ({row.get('reason', '')}; log: `{row.get('log', '')}`)"
        cells = [c.replace("|", "\\|").replace("\n", " ") for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table_md(rows: Sequence[Dict], path: str, *, title: str = "", notes: Sequence[str] = ()) -> str:
    text = format_markdown(rows, title=title)
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def write_table_csv(rows: Sequence[Dict], path: str) -> None:
    """Every column with full precision (empty cells for unknown values)."""
    keys = [k for k, _, _ in COLUMNS] + CSV_EXTRA
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})


def write_results_json(path: str, payload: Dict) -> None:
    write_json(path, payload, indent=2, overwrite=True)


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def environment_info(device: str, threads: int) -> Dict:
    """Versions, machine and git state recorded with every comparison."""
    import numpy
    import torch

    try:
        import detectron2

        d2 = detectron2.__version__
    except Exception:  # noqa: BLE001
        d2 = "not importable"
    from .speed import device_description

    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "detectron2": d2,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.node(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "device_name": device_description(device),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "torch_threads": threads if threads > 0 else torch.get_num_threads(),
        "git_commit": commit or None,
        "git_dirty": dirty,
    }


def write_reproduce_md(path: str, *, command: str, env: Dict, methods: Sequence, config_hashes: Dict[str, List[Tuple[str, str]]],
                       settings: Dict) -> None:
    """The exact commands, config SHA-256s, versions, machine and date of a comparison."""
    lines = ["# How this comparison was made", "", f"Date: {env['date']}", "", "## Command", "", "```",
             command, "```", "", "## Environment", ""]
    for k in ("python", "torch", "detectron2", "numpy", "platform", "machine", "cpu_count", "device", "device_name",
              "cuda", "torch_threads", "git_commit", "git_dirty"):
        lines.append(f"- {k}: `{env.get(k)}`")
    lines += ["", "## Settings", ""]
    for k, v in settings.items():
        lines.append(f"- {k}: `{v}`")
    lines += ["", "## Config files (SHA-256, with their _BASE_ files)", ""]
    for name, files in config_hashes.items():
        lines.append(f"- {name}:")
        for p, h in files:
            lines.append(f"  - `{p}` `{h}`")
    lines += ["", "## Commands run per method", "",
              "Training and evaluation ran in subprocesses from the repository root; a reused run "
              "shows the command that trained it.", ""]
    for r in methods:
        state = "reused" if r.reused else ("trained" if r.trained else "not trained")
        lines.append(f"### {r.name} (`runs/{r.id}`, {state}, status {r.status})")
        lines.append("")
        lines.append("```")
        lines += [c for c in r.commands if c] or ["(none)"]
        lines.append("```")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
