"""Overfitting check: the pieces learn together. The tiny CPU config trained for a few hundred
iterations on two synthetic nuclei images reaches mask AP50 > 80 on those same images."""
import os

import torch

from objguided_d2.data.register import register_dataset_spec
from objguided_d2.engine import Trainer
from objguided_d2.engine.train_net import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_tiny_model_overfits_two_images(tmp_path, monkeypatch):
    monkeypatch.setenv("OBJGUIDED_CACHE", str(tmp_path / "cache"))
    # Images 0 and 1 of this seed hold 18 and 14 touching nuclei of 7-29 px.
    register_dataset_spec("overfit=synthetic:nuclei?image_size=128&num_train=2&num_val=1&num_test=1&seed=3")
    cfg = load_config(os.path.join(ROOT, "configs/tiny/objguided_R18_tiny.yaml"), [
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", '("overfit_train",)', "DATASETS.TEST", '("overfit_train",)',
        # no augmentation: memorise exactly the evaluated images
        "INPUT.SQUARE_CROP_ON", "False", "INPUT.RANDOM_FLIP", "none",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "300", "SOLVER.BASE_LR", "0.001",
        "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0", "SEED", "1",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ])
    cfg.freeze()
    torch.manual_seed(1)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = Trainer.test(cfg, trainer.model)
    assert results["segm"]["AP50"] > 80.0, results
    assert results["paper"]["APseg50"] > 80.0, results
