"""The shared base every layer may import: nothing here imports another kavier_opendc package.

    errors.py      the error types and their file/row/field wording
    validation.py  JSON Schema loading and one-line problems with JSON paths
    atomic.py      atomic file and folder writing
    progress.py    the progress bar (tqdm), quiet off a terminal
"""
