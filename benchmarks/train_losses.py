#!/usr/bin/env python
"""Regression check for refactors: train a model from a fixed seed for a few iterations on a
tiny in-memory synthetic dataset and print every loss of every iteration (full precision), so
that the same command run before and after a change shows whether training is unchanged.

    OMP_NUM_THREADS=1 python benchmarks/train_losses.py                       # tiny config, 50 its
    OMP_NUM_THREADS=1 python benchmarks/train_losses.py --opts MODEL.OBJGUIDED.REFINE_ON False

One torch thread (bitwise-reproducible CPU kernels), no data loader, no augmentation: the batches
are fixed synthetic nuclei images (``render_sample``) cycled in order; the optimizer is the
config's (``objguided_d2.engine.trainer.build_optimizer``, clipping included).
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_batches(num_images: int, size: int, per_batch: int, seed: int):
    """Fixed training batches: lists of Detectron2 input dicts with ``instances``."""
    import numpy as np
    import torch
    from detectron2.structures import BitMasks, Boxes, Instances

    from objguided_d2.data.datasets.synthetic import render_sample

    inputs = []
    for k in range(num_images):
        image, label = render_sample("nuclei", size, seed, "train", k)
        ids = [i for i in np.unique(label) if i != 0]
        masks = torch.from_numpy(np.stack([label == i for i in ids])) if ids else torch.zeros(0, size, size, dtype=torch.bool)
        inst = Instances((size, size))
        inst.gt_masks = BitMasks(masks)
        inst.gt_boxes = Boxes(inst.gt_masks.get_bounding_boxes().tensor)
        inst.gt_classes = torch.zeros(len(ids), dtype=torch.int64)
        img = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)))  # BGR
        inputs.append({"image": img, "instances": inst, "height": size, "width": size})
    return [inputs[i : i + per_batch] for i in range(0, num_images, per_batch)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/tiny/objguided_R18_tiny.yaml")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--num-images", type=int, default=4)
    ap.add_argument("--opts", nargs="*", default=[], help="config overrides KEY VALUE ...")
    args = ap.parse_args(argv)

    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    sys.path.insert(0, ROOT)
    from objguided_d2.engine.train_net import load_config
    from objguided_d2.engine.trainer import build_optimizer

    torch.set_num_threads(1)
    cfg = load_config(os.path.join(ROOT, args.config),
                      ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *args.opts])
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)  # with the config's gradient clipping
    batches = make_batches(args.num_images, args.image_size, cfg.SOLVER.IMS_PER_BATCH, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config {args.config} opts {args.opts} seed {args.seed} params {n_params} "
          f"torch {torch.__version__} threads {torch.get_num_threads()}")
    torch.manual_seed(args.seed)
    with EventStorage() as storage:
        for it in range(args.iters):
            storage.iter = it
            losses = model(batches[it % len(batches)])
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            vals = " ".join(f"{k}={v.item():.9e}" for k, v in sorted(losses.items()))
            print(f"iter {it:3d} total={total.item():.9e} {vals}", flush=True)


if __name__ == "__main__":
    main()
