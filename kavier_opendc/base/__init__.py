"""The shared base every layer may import: nothing here imports another kavier_opendc package.

errors.py      the error types and their file/row/field wording
validation.py  JSON Schema loading and one-line problems with JSON paths
documents.py   safe JSON/YAML parsing (no hostile document hangs or crashes the process)
limits.py      the largest sizes accepted, each with its reason
atomic.py      atomic file and folder writing, below the output root a command owns (never re-made once removed)
arrow.py       pyarrow for the output writers, without the pandas import of pyarrow.array
output_folder.py  one command per output folder (its lock), and replacing a complete result safely
interrupts.py  SIGINT and SIGTERM as one exception (clean-up runs, exit 130 or 143)
faults.py      the fault tests' hooks (stop at a named moment, make writes fail), inert unless their variables are set
progress.py    the progress bar (tqdm), quiet off a terminal
units.py       human units for printed durations
"""
