#!/usr/bin/env python
"""Train or evaluate objguided-d2, Mask R-CNN or PointRend with Detectron2.

    python tools/train_net.py --config-file configs/nuclei/objguided_R_50.yaml
    python tools/train_net.py --config-file configs/tiny/mask_rcnn_R18_tiny.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file ... --num-gpus 8            # DDP through detectron2.engine.launch
    python tools/train_net.py --config-file ... --dataset cells=labelfolder:/data/cells \
        DATASETS.TRAIN '("cells_train",)' DATASETS.TEST '("cells_test",)'

See README.md for every option.
"""
import os
import sys

# This checkout's package first, not another one installed in the same environment (a study worktree).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import objguided_d2  # noqa: F401  (registers the model, datasets and evaluators)
from objguided_d2.engine.train_net import cli, main, setup  # noqa: F401

if __name__ == "__main__":
    cli(sys.argv[1:])
