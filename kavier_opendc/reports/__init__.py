"""The reports of a run: performance, sustainability and efficiency (report.json, report.md, plots)."""
