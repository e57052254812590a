"""symmpo: fused-kernel SymMPO losses for multimodal preference optimisation.

Install torch first (any release in the range below; pip keeps an installed torch that
satisfies it), then `pip install -e ".[dev]"`.
"""

from setuptools import find_packages, setup

TORCH = "torch>=2.4,<2.15"  # 2.11 on the GPU image, 2.13.0 as the CPU build; never upgraded
TRAIN = [
    "transformers>=4.56",  # from_pretrained(dtype=...)
    "peft>=0.15",  # peft.helpers.disable_input_dtype_casting
    "accelerate>=1.0",
    "datasets>=3.0",
    "pillow>=10",
    "tqdm>=4.60",
    "tokenizers>=0.20",
    "matplotlib>=3.7",  # the run's curves.png
    "pyyaml>=6",  # --config files
]
TRACKING = ["tensorboard>=2.14"]  # --report_to tensorboard (wandb: pip install wandb)
TRL = [
    "trl>=1.16,<1.17; python_version >= '3.11'"
]  # symmpo.integrations.trl uses private DPOTrainer hooks
BENCH = [
    "pytest-benchmark>=4.0",
    "liger-kernel>=0.5",
    "packaging",  # liger-kernel imports it without declaring it
    "cut-cross-entropy>=25.1",
    "matplotlib>=3.7",  # plot_end_to_end.py
]

setup(
    name="symmpo",
    version="0.1.0",
    description="Fused Triton kernels and an exact API for the SymMPO preference loss",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["symmpo", *(f"symmpo.{p}" for p in find_packages("symmpo")), "symmpo_kernels"],
    # The folder kernels/ is installed as symmpo_kernels: a top-level `kernels` belongs to
    # Hugging Face's `kernels` package and one would overwrite the other.
    package_dir={"symmpo": "symmpo", "symmpo_kernels": "kernels"},
    install_requires=[
        TORCH,
        "triton>=3.6; platform_system == 'Linux'",
        "numpy>=1.24",  # Triton's interpreter (TRITON_INTERPRET=1) needs it
    ],
    extras_require={
        "train": TRAIN,
        "bench": BENCH,
        "flash": ["flash-attn>=2.6"],  # builds only against CUDA: optional, imported guarded
        "deepspeed": ["deepspeed>=0.15"],  # for configs/zero2.yaml and configs/zero3.yaml
        "tracking": TRACKING,
        # AMBER's official word handling (plus nltk's punkt/tagger/wordnet data and spaCy's
        # en_core_web_lg model, downloaded by hand); without them its scorer approximates
        "amber": ["nltk>=3.8", "spacy>=3.7"],
        "trl": [*TRAIN, *TRL],
        "dev": ["pytest>=8", "ruff>=0.6", "hypothesis>=6.100", *TRAIN, *BENCH, *TRACKING, *TRL],
    },
)
