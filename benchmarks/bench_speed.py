#!/usr/bin/env python
"""Speed benchmark: objguided-d2 (batched / per-ROI loop / fast config) against Detectron2's
Mask R-CNN and PointRend R50-FPN, all with random weights, on the same synthetic images.

Every model gets the *same* detections: the heads run as usual (their time counts), then their
final boxes are replaced by the synthetic objects' boxes, so each mask branch segments exactly
the same N objects (ours: CenterNet decode -> fixed proposals; baselines: box predictor ->
fixed detections). Each (model, image size, N) is measured in a fresh child process, so the
peak-memory figure is that measurement's own (CPU: peak RSS above the RSS after building the
model and warming up is not separable from the allocator's caching, so the reported figure is
the peak RSS growth over the freshly built model; CUDA: ``torch.cuda.max_memory_allocated``).

Printed per row: whole-image inference latency (median of repeats, after warm-up), the
segmentation branch alone per object (``roi_heads.forward_with_given_boxes`` on the fixed
boxes), training-step time (forward + backward + SGD step, one image with N GT objects; ours and
Mask R-CNN only), peak memory, each also as a ratio to Mask R-CNN of the same run.

    python benchmarks/bench_speed.py                    # quick (a few minutes on 2 CPU cores)
    python benchmarks/bench_speed.py --full             # 10/50/200/500 objects, all models
    python benchmarks/bench_speed.py --objects 50 200 --models ours ours_fast --repeats 5
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This checkout's package first, not another one installed in the same environment (a study worktree).
sys.path.insert(0, ROOT)

# name -> (config file, extra opts)
MODELS: Dict[str, tuple] = {
    "ours": ("configs/Base-ObjGuided.yaml", []),
    "ours_fast": ("configs/fast/objguided_R18_fast.yaml", []),
    "ours_fast34": ("configs/fast/objguided_R34_fast.yaml", []),
    "mask_rcnn": ("configs/Base-MaskRCNN-FPN.yaml", []),
    "pointrend": ("configs/Base-PointRend-FPN.yaml", []),
}
QUICK = dict(objects=[10, 200], models=["ours", "ours_fast", "mask_rcnn", "pointrend"],
             repeats=2, warmup=1, train_objects=[50])
FULL = dict(objects=[10, 50, 200, 500], models=["ours", "ours_fast", "ours_fast34",
                                                 "mask_rcnn", "pointrend"],
            repeats=5, warmup=2, train_objects=[50, 200])


# ----------------------------------------------------------------------------- synthetic data
def synthetic_objects(size: int, num: int, seed: int = 0):
    """``num`` random ellipses (diameters 8..40 px, any aspect up to 1:2.5, overlaps allowed) in a
    ``size`` x ``size`` image. Returns image (3, H, W) uint8 tensor, boxes (num, 4) float32 XYXY,
    masks (num, H, W) bool."""
    import torch

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    d = 8 + 32 * torch.rand(num, generator=g)
    aspect = 1 + 1.5 * torch.rand(num, generator=g)
    ry, rx = d / 2, d / 2 / aspect
    swap = torch.rand(num, generator=g) < 0.5
    ry, rx = torch.where(swap, rx, ry), torch.where(swap, ry, rx)
    cy = ry + (size - 2 * ry) * torch.rand(num, generator=g)
    cx = rx + (size - 2 * rx) * torch.rand(num, generator=g)
    masks = (((yy[None] - cy[:, None, None]) / ry[:, None, None]) ** 2
             + ((xx[None] - cx[:, None, None]) / rx[:, None, None]) ** 2) <= 1
    ys, xs = masks.any(dim=2), masks.any(dim=1)
    y0 = ys.float().argmax(dim=1)
    y1 = size - ys.flip(1).float().argmax(dim=1)
    x0 = xs.float().argmax(dim=1)
    x1 = size - xs.flip(1).float().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    img = torch.full((size, size), 40.0) + 150.0 * masks.any(dim=0).float()
    img = img + 20 * torch.randn(size, size, generator=g)
    image = img.clamp(0, 255).to(torch.uint8)[None].expand(3, size, size).contiguous()
    return image, boxes, masks


# ----------------------------------------------------------------------------- child process
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _build(name: str, device: str, num: int):
    import torch
    from detectron2.modeling import build_model

    from objguided_d2.config import load_config

    cfg_file, opts = MODELS[name]
    opts = list(opts) + ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device,
                         "TEST.DETECTIONS_PER_IMAGE", str(max(num, 1))]
    cfg = load_config(os.path.join(ROOT, cfg_file), opts, allow_cuda_fallback=False)
    torch.manual_seed(0)
    model = build_model(cfg)
    return cfg, model


def _force_detections(model, boxes_ref: dict) -> None:
    """Run each model's own detection stage, then hand the fixed boxes to its mask branch."""
    import torch
    from detectron2.structures import Boxes, Instances

    def fixed(image_size, device, proposal: bool):
        b = boxes_ref["boxes"].to(device)
        inst = Instances(image_size)
        n = len(b)
        scores = torch.linspace(0.99, 0.5, n, device=device)
        if proposal:
            inst.proposal_boxes = Boxes(b)
            inst.objectness_logits = torch.logit(scores)
        else:
            inst.pred_boxes = Boxes(b)
        inst.scores = scores
        inst.pred_classes = torch.zeros(n, dtype=torch.int64, device=device)
        return inst

    pg = model.proposal_generator
    if type(pg).__name__ == "CenterNetProposalGenerator":
        orig = pg.decode

        def decode(logits, wh, offset, image_sizes):
            out = orig(logits, wh, offset, image_sizes)  # computed (and timed), then replaced
            return [fixed(s, logits.device, True) for s in image_sizes]

        pg.decode = decode
    else:
        bp = model.roi_heads.box_predictor
        orig = bp.inference

        def inference(predictions, proposals):
            orig(predictions, proposals)
            return [fixed(p.image_size, predictions[0].device, False) for p in proposals], None

        bp.inference = inference


def _sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device, warmup, repeats) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_worker(job: dict) -> dict:
    """One (model, size, objects) measurement; returns a JSON-able dict."""
    import torch

    torch.set_num_threads(job["threads"])
    device = job["device"]
    name, size, num = job["model"], job["size"], job["objects"]
    res = {"model": name, "size": size, "objects": num}
    image, boxes, masks = synthetic_objects(size, num, seed=job["seed"])
    cfg, model = _build(name, device, num)
    boxes_ref = {"boxes": boxes}
    _force_detections(model, boxes_ref)
    inputs = [{"image": image.to(device), "height": size, "width": size}]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    model.eval()
    with torch.no_grad():
        res["latency_s"] = _timed(lambda: model(inputs), device, job["warmup"], job["repeats"])
        out = model(inputs)[0]["instances"]
        res["num_out"] = len(out)
        # Segmentation branch alone on the fixed boxes.
        images = model.preprocess_image(inputs)
        feats = model.backbone(images.tensor)
        from detectron2.structures import Boxes, Instances

        inst = Instances(images.image_sizes[0])
        inst.pred_boxes = Boxes(boxes.to(device))
        inst.scores = torch.linspace(0.99, 0.5, num, device=device)
        inst.pred_classes = torch.zeros(num, dtype=torch.int64, device=device)
        res["seg_s"] = _timed(
            lambda: model.roi_heads.forward_with_given_boxes(feats, [inst]), device,
            job["warmup"], job["repeats"])
    if device.startswith("cuda"):
        res["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        res["peak_mem_mb"] = _peak_rss_mb() - rss0
    # The machine may be shared: the 1-minute load average right after the timed calls.
    res["load1"] = round(os.getloadavg()[0], 2)
    if job["train"]:
        from detectron2.structures import BitMasks, Boxes, Instances

        model.train()
        gt = Instances((size, size))
        gt.gt_boxes = Boxes(boxes)
        gt.gt_classes = torch.zeros(num, dtype=torch.int64)
        gt.gt_masks = BitMasks(masks)
        batch = [{"image": image.to(device), "height": size, "width": size,
                  "instances": gt.to(device)}]
        opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

        def step():
            losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()

        from detectron2.utils.events import EventStorage

        with EventStorage():
            res["train_step_s"] = _timed(step, device, job["warmup"], job["repeats"])
    return res


# ----------------------------------------------------------------------------- parent
def versions(device: str, threads: int) -> str:
    import detectron2
    import numpy
    import torch

    if device.startswith("cuda"):
        dev = torch.cuda.get_device_name(0)
    else:
        dev = f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"
    return (f"device: {device} [{dev}], torch threads: {threads}, python {platform.python_version()}, "
            f"torch {torch.__version__}, detectron2 {detectron2.__version__}, numpy {numpy.__version__}")


def spawn(job: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(job)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"worker {job} failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def fmt(v, unit="", nd=3):
    return "-" if v is None else f"{v:.{nd}f}{unit}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="complete table (slow on a CPU)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512], help="square image sides (px)")
    ap.add_argument("--objects", type=int, nargs="+", help="objects (= detections) per image")
    ap.add_argument("--train-objects", type=int, nargs="*",
                    help="object counts at which the training step is timed (ours, mask_rcnn)")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS))
    ap.add_argument("--repeats", type=int, help="timed repeats (median reported)")
    ap.add_argument("--warmup", type=int, help="untimed warm-up calls")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="per-measurement seconds")
    ap.add_argument("--json", help="also write every row to this file")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        print(json.dumps(run_worker(json.loads(args._worker))))
        return 0
    preset = FULL if args.full else QUICK
    objects = args.objects or preset["objects"]
    models = args.models or preset["models"]
    repeats = args.repeats or preset["repeats"]
    warmup = preset["warmup"] if args.warmup is None else args.warmup
    train_objects = preset["train_objects"] if args.train_objects is None else args.train_objects
    if "mask_rcnn" not in models:
        models = models + ["mask_rcnn"]  # every ratio is to Mask R-CNN of the same run
    print(versions(args.device, args.threads))
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"objects {objects}, sizes {args.sizes}, repeats {repeats} (median), warm-up {warmup}, "
          f"train step at {train_objects} objects (ours*, mask_rcnn)", flush=True)
    print(f"load average at start (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    t_start = time.time()
    for size in args.sizes:
        for num in objects:
            for name in models:
                train = num in train_objects and (name.startswith("ours") or name == "mask_rcnn")
                job = dict(model=name, size=size, objects=num, device=args.device,
                           threads=args.threads, repeats=repeats, warmup=warmup,
                           seed=args.seed, train=train)
                r = spawn(job, args.timeout)
                rows.append(r)
                print(f"  measured {name:12s} size {size} objects {num:4d}: "
                      f"{r['latency_s']:.3f} s/img, load {r.get('load1', float('nan')):.2f} "
                      f"({time.time() - t_start:.0f} s elapsed)", flush=True)
    print_table(rows)
    print(f"load average at end (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": versions(args.device, args.threads), "rows": rows}, f, indent=1)
    return 0


def print_table(rows: List[dict]) -> None:
    ref = {(r["size"], r["objects"]): r for r in rows if r["model"] == "mask_rcnn"}
    base10 = {(r["model"], r["size"]): r["latency_s"] for r in rows
              if r["objects"] == min(x["objects"] for x in rows)}

    def ratio(r, key):
        m = ref.get((r["size"], r["objects"]))
        if m is None or r.get(key) is None or not m.get(key):
            return "-"
        return f"{r[key] / m[key]:.2f}x"

    hdr = (f"{'model':12s} {'size':>4s} {'obj':>4s} {'latency s':>10s} {'vs MRCNN':>8s} "
           f"{'vs fewest':>9s} {'seg ms/obj':>10s} {'vs MRCNN':>8s} {'train s':>8s} {'vs MRCNN':>8s} "
           f"{'peak MB':>8s} {'vs MRCNN':>8s} {'#out':>5s}")
    print()
    print(hdr)
    print("-" * len(hdr))
    for r in sorted(rows, key=lambda r: (r["size"], r["objects"], r["model"])):
        seg_ms = 1000 * r["seg_s"] / max(r["objects"], 1)
        r["seg_ms_per_obj"] = seg_ms
        m = ref.get((r["size"], r["objects"]))
        seg_ratio = f"{r['seg_s'] / m['seg_s']:.2f}x" if m else "-"
        scale = r["latency_s"] / base10[(r["model"], r["size"])]
        print(f"{r['model']:12s} {r['size']:4d} {r['objects']:4d} {r['latency_s']:10.3f} "
              f"{ratio(r, 'latency_s'):>8s} {scale:8.2f}x {seg_ms:10.2f} {seg_ratio:>8s} "
              f"{fmt(r.get('train_step_s')):>8s} {ratio(r, 'train_step_s'):>8s} "
              f"{r['peak_mem_mb']:8.0f} {ratio(r, 'peak_mem_mb'):>8s} {r['num_out']:5d}")
    print("\nlatency: model([image]) incl. pre/post-processing; seg: mask branch on the fixed boxes; "
          "vs fewest: latency / latency at the fewest objects; peak MB: "
          "CPU peak-RSS growth / CUDA max_memory_allocated; #out: instances returned "
          "(ours drops masks removed by mask NMS / empty after thresholding).")


if __name__ == "__main__":
    sys.exit(main())
