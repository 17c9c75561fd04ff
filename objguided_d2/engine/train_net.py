"""Training / evaluation entry point (``tools/train_net.py``, console command ``objguided-train``).

Detectron2's standard script shape: ``default_argument_parser`` (``--config-file``, ``--resume``,
``--eval-only``, ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, ``opts``)
plus ``--dataset NAME=FORMAT:PATH`` (repeatable) to register the user's own data without Python,
``--trust-pickle`` (allow ``.pkl`` / pickled weights) and ``--overwrite`` (train from scratch into an
OUTPUT_DIR that already holds a run; refused otherwise unless ``--resume``).
Distributed training goes through Detectron2's ``launch`` (torch.distributed: NCCL on GPUs, gloo on
CPU), never a home-made multi-process loop.
"""
import logging
import sys

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from objguided_d2.config import ConfigError, load_config
from objguided_d2.engine.checkpoint import ObjGuidedCheckpointer, check_output_dir
from objguided_d2.engine.trainer import Trainer

__all__ = ["get_parser", "load_config", "check_eval_datasets", "setup", "main", "cli"]

logger = logging.getLogger("objguided_d2")


def get_parser():
    from objguided_d2.data.register import add_dataset_arguments

    parser = default_argument_parser(
        epilog="Example: tools/train_net.py --config-file configs/nuclei/objguided_R_50.yaml "
        "--dataset mycells=labelfolder:/data/cells DATASETS.TRAIN '(\"mycells_train\",)'"
    )
    add_dataset_arguments(parser)
    # Reliability flags (docs/reliability.md).
    parser.add_argument(
        "--trust-pickle", action="store_true",
        help="allow weights that need full unpickling (.pkl such as detectron2:// model-zoo files, or "
        ".pth with Python objects); unpickling can execute code. Same as MODEL.TRUST_PICKLE True",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="train from scratch into an OUTPUT_DIR that already holds a run (its checkpoints are "
        "overwritten); without it such a run is refused unless --resume",
    )
    return parser


def setup(args):
    """Register ``--dataset`` specs, build and freeze the config, and run Detectron2's
    ``default_setup`` (output dir, logging, config dump, seeds)."""
    from objguided_d2.data.register import register_from_args

    register_from_args(args)
    opts = list(args.opts or [])
    if getattr(args, "trust_pickle", False):
        opts += ["MODEL.TRUST_PICKLE", "True"]
    cfg = load_config(args.config_file, opts)
    cfg.freeze()
    if args.eval_only:
        check_eval_datasets(cfg, args.config_file)
    else:  # before default_setup writes config.yaml / log.txt into OUTPUT_DIR
        _check_output_dir(cfg.OUTPUT_DIR, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    default_setup(cfg, args)
    return cfg


def check_eval_datasets(cfg, config_file):
    """``--eval-only`` with an empty ``DATASETS.TEST`` would load the weights, evaluate nothing and
    exit 0 (a run folder's ``config.yaml`` from ``tools/compare.py`` has ``DATASETS.TEST: []``)."""
    if not cfg.DATASETS.TEST:
        raise ConfigError(
            f"{config_file}: --eval-only has nothing to evaluate: DATASETS.TEST is empty (add e.g. "
            "DATASETS.TEST '(\"NAME_test\",)' with --dataset NAME=FORMAT:PATH)"
        )


def _check_output_dir(output_dir, *, resume, overwrite):
    """check_output_dir on the main process; every rank raises the same error (no DDP hang)."""
    err = None
    if comm.is_main_process():
        try:
            check_output_dir(output_dir, resume=resume, overwrite=overwrite)
        except FileExistsError as e:
            err = str(e)
    if comm.get_world_size() > 1:
        err = comm.all_gather(err)[0]
    if err:
        raise FileExistsError(err)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        ObjGuidedCheckpointer(model, save_dir=cfg.OUTPUT_DIR, trust_pickle=cfg.MODEL.TRUST_PICKLE).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    if comm.is_main_process():  # the object size --diameter rescales to (objguided_d2/data/object_size.py)
        from objguided_d2.data.object_size import write_size_stats

        write_size_stats(cfg)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    res = trainer.train()
    # DefaultTrainer.train() returns results only with TEST.EXPECTED_RESULTS; keep the last eval.
    return res if res is not None else getattr(trainer, "_last_eval_results", None)


def cli(argv=None):
    """The command line; a refused file (config, weights, checkpoint tag) or data error ends it
    with one line ``<ErrorType>: <message naming the file>`` on stderr and exit code 2."""
    from objguided_d2.data.io import DataError

    from .safe_load import UntrustedFileError

    args = get_parser().parse_args(argv)
    print("Command Line Args:", args)
    try:
        if args.num_gpus * args.num_machines > 1:
            cfg = load_config(args.config_file, args.opts)  # refused here, in one line, not in every worker
            if args.eval_only:
                check_eval_datasets(cfg, args.config_file)
        return launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (ConfigError, UntrustedFileError, DataError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
