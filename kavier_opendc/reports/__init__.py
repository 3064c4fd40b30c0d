"""The reports of a run: performance, sustainability and efficiency (report.json, report.md, report.html, plots).

report.py      report.json and report.md: performance, sustainability, efficiency, provenance
efficiency.py  energy, carbon and money per token, goodput under SLOs
plots.py       PNG plots of a run and of a sweep
html.py        report.html, sweep.html and plan.html: self-contained pages, plots embedded, sortable tables
compare.py     errors of a simulation against a measurement (``kavier compare``)
"""
