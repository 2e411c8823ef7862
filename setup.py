import re

from setuptools import setup

# One version, fastig.__version__: data-set manifests record it, and a resume says when it differs.
VERSION = re.search(r'^__version__ = "(.+)"$', open("engine/__init__.py", encoding="utf-8").read(), re.M).group(1)

setup(
    name="fastig",
    version=VERSION,
    description="Fast, memory-bounded Integrated Gradients for Hugging Face transformer classifiers, checked against Captum",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The import names are fastig (engine/: the core), fastig.app (engine/app: the command line, data
    # sets, reports, the demo), fastig.kernels (engine/kernels) and fastig.benchmarks (so `fastig bench`
    # works from any install). The kernels live inside engine/ because a top-level kernels/ folder is
    # imported as the `kernels` package transformers >= 5.25 requires, whenever Python runs from the
    # repository root (python -m pytest, a notebook here): the CI failed on exactly that.
    packages=["fastig", "fastig.app", "fastig.kernels", "fastig.benchmarks"],
    package_dir={"fastig": "engine", "fastig.benchmarks": "benchmarks"},
    # Everything the commands need: the core needs torch, transformers, captum (the reference and the
    # drop-in), numpy and tqdm; accelerate launches --processes; pandas, pyarrow and datasets read data
    # sets (CSV, JSONL, parquet, save_to_disk folders, the hub); matplotlib draws the report's charts.
    install_requires=["torch>=2.1", "transformers>=4.40", "captum>=0.7", "accelerate>=0.30",
                      "numpy", "tqdm", "pandas", "pyarrow", "datasets", "matplotlib"],
    extras_require={
        # transformers-interpret: a real tool on Captum, run unchanged under fastig.patch_captum() in the tests
        "dev": ["pytest>=7", "transformers-interpret==0.10.0", "inseq==0.7.1"],
        "triton": ["triton>=3.0; platform_system == 'Linux'"],
    },
    entry_points={"console_scripts": ["fastig = fastig.app.cli:main"]},
)
