"""objguided-d2: Object-Guided Instance Segmentation (Yi et al., TMI 2021) as a Detectron2 plugin.

detectron2 itself is deliberately NOT listed: it has no release on PyPI under its own name.
Install it with ``python tools/install_detectron2.py`` (see README.md).
"""
from setuptools import find_packages, setup

setup(
    name="objguided-d2",
    version="0.1.0",
    description="Object-guided instance segmentation with auxiliary feature refinement for Detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["objguided_d2", "objguided_d2.*"]),
    package_data={"objguided_d2.napari": ["napari.yaml"]},  # the napari plugin's npe2 manifest
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "numpy>=1.23",
        "fvcore>=0.1.5",
        "iopath>=0.1.7",
        "pycocotools>=2.0.7",
        "opencv-python-headless>=4.6",
        "tifffile>=2022.5.4",
        "roifile>=2023.8.30",  # --roi-zip: ImageJ / Fiji ROI sets
        "shapely>=2.0",  # --roi-zip / --geojson: exact pixel-edge outlines (GEOS)
        "scikit-image>=0.20",
        "scipy>=1.9",
        "Pillow>=9.0",
        "matplotlib>=3.5",
        "tqdm>=4.50",
        "tensorboard>=2.10",
        "termcolor>=1.1",
        "yacs>=0.1.8",
        "tabulate>=0.8",
        "cloudpickle>=1.6",
        "omegaconf>=2.1,<2.4",
        "hydra-core>=1.1",
        "black",
        "packaging",
        "psutil>=5.8",
        # detectron2's model_zoo does `import pkg_resources`, removed in setuptools 81.
        "setuptools<81",
    ],
    extras_require={
        # C++ COCOeval (same numbers as pycocotools, much faster on crowded images); used when installed.
        "fast-eval": ["faster-coco-eval>=1.6"],
        "test": ["pytest>=7", "hypothesis>=6", "faster-coco-eval>=1.6", "pytest-qt>=4"],
        # The napari plugin (docs/napari.md): widgets, sample data, writers.
        "napari": ["napari>=0.5", "magicgui>=0.8", "npe2>=0.7", "PyQt6>=6.5", "pandas"],
    },
    entry_points={
        "console_scripts": [
            "objguided-train=objguided_d2.cli:train_main",
            "objguided-predict=objguided_d2.cli:predict_main",
            "objguided-compare=objguided_d2.cli:compare_main",
        ],
        "napari.manifest": ["objguided-d2=objguided_d2.napari:napari.yaml"],
    },
)
