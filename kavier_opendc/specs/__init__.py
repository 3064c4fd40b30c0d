"""Inputs A and B: LLM and GPU catalogues (built-in plus user files).

catalog.py     model and GPU specifications and their catalogues (models.yaml, gpus.yaml, user files)
hf_import.py   a model's catalogue entry from its HuggingFace config.json (kavier catalog import)
profiles.py    per-GPU efficiency profiles (profiles.yaml) and the kernel-time formulas
iteration_time.py  the iteration timer: one iteration's time on a TP group, for the engine and the calibration
frameworks.py  serving-framework profiles (frameworks.yaml): scheduler policy, batch defaults, step overheads
snapshot.py    the built-in files parsed ahead (builtin_catalog.json), read while they match the files
"""

from kavier_opendc.specs.catalog import (  # noqa: F401
    Catalog,
    GPUSpec,
    ModelSpec,
    default_catalog,
    load_catalog_file,
)
