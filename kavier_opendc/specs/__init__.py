"""Inputs A and B: LLM and GPU catalogues (built-in plus user files)."""

from kavier_opendc.specs.catalog import (  # noqa: F401
    Catalog,
    GPUSpec,
    ModelSpec,
    default_catalog,
    load_catalog_file,
)
