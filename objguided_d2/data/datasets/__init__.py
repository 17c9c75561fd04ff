"""Dataset formats, each turned into COCO instances JSON that Detectron2 reads as is.

One module per format (:mod:`.coco`, :mod:`.labelfolder`, :mod:`.dsb2018`, :mod:`.cvppp`,
:mod:`.synthetic`), plus what they share: :mod:`.splits` (train/val/test), :mod:`.cache` (the
fingerprinted cache and its one write transaction) and :mod:`.convert` (folder formats -> cached
JSON). :mod:`objguided_d2.data.register` maps ``--dataset`` specs onto them.
"""
from .cache import ConvertedDataset, cache_root  # noqa: F401
from .coco import prepare_coco  # noqa: F401
from .convert import REAL_FORMATS, convert_to_coco  # noqa: F401
from .cvppp import read_cvppp_label  # noqa: F401
from .splits import SPLITS, resolve_splits, seeded_split  # noqa: F401
from .synthetic import FAMILIES, FAMILY_CLASSES, generate_synthetic_dataset, render_sample  # noqa: F401
