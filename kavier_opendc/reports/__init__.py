"""The reports of a run: performance, sustainability and efficiency (report.json, report.md, plots).

report.py      report.json and report.md: performance, sustainability, efficiency, provenance
efficiency.py  energy, carbon and money per token, goodput under SLOs
plots.py       PNG plots of a run and of a sweep
compare.py     errors of a simulation against a measurement (``kavier compare``)
"""
