"""Inputs A and B: LLM and GPU catalogues (built-in plus user files).

    catalog.py     model and GPU specifications and their catalogues (models.yaml, gpus.yaml, user files)
    profiles.py    per-GPU efficiency profiles (profiles.yaml) and the iteration timer they drive
    frameworks.py  serving-framework profiles (frameworks.yaml): scheduler policy, batch defaults, step overheads
"""

from kavier_opendc.specs.catalog import (  # noqa: F401
    Catalog,
    GPUSpec,
    ModelSpec,
    default_catalog,
    load_catalog_file,
)
