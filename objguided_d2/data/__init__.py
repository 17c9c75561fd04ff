"""Datasets, converters and the dataset mapper of objguided-d2.

Importing this package registers the built-in synthetic datasets (``synth_<family>[_tiny]_
{train,val,test}``) lazily: nothing is generated until ``DatasetCatalog.get``. See
:mod:`objguided_d2.data.register` for registering your own data.
"""
from .io import DataError, read_image, read_label_map  # noqa: F401
from .datasets import (  # noqa: F401
    FAMILIES,
    convert_to_coco,
    generate_synthetic_dataset,
    prepare_coco,
    read_cvppp_label,
)
from .transforms import RandomSquareCrop, SquareCropPadTransform  # noqa: F401
from .dataset_mapper import ObjGuidedDatasetMapper, build_objguided_augmentation  # noqa: F401
from .register import (  # noqa: F401
    add_dataset_arguments,
    register_builtin_synthetic,
    register_dataset_spec,
    register_from_args,
    register_synthetic,
)

register_builtin_synthetic(replace=False)
