"""report.html, sweep.html and plan.html: one self-contained page each, readable offline.

A run's page is its report.md rendered to HTML (one owner of the text and the definitions:
:mod:`kavier_opendc.reports.report`), the PNG plots embedded as base64 data URIs, the framework's and
the GPU profile's provenance, and a table of every number in report.json with its unit. A sweep's or
a plan's page is a comparison table that sorts when a header is clicked (a small inline script) and the
trade-off (Pareto) plots. Nothing is loaded from the network: no CDN, no external style or script.
Plain string building with ``html.escape`` (a template engine is not worth a dependency for three pages).
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kavier_opendc.reports.efficiency import DEFINITIONS
from kavier_opendc.reports.report import LATENCY_DEFINITION, SECTIONS, fmt

RUN_HTML = "report.html"
SWEEP_HTML = "sweep.html"
PLAN_HTML = "plan.html"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #d0d0d0;padding:.25em .55em;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
code{background:#f5f5f5;padding:0 .2em}pre{background:#f5f5f5;padding:.6em;overflow-x:auto}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.wide{overflow-x:auto}
"""

# Clicking a header of a table.sortable sorts its rows: numerically by data-value where the cells have one
# (empty values last), else by text; a second click reverses the order.
_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (t) {
  var heads = t.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, i) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(r) {
        var c = r.cells[i], v = c.getAttribute("data-value");
        if (v === null) { return c.textContent; }
        return v === "" ? NaN : parseFloat(v);
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x === "number" && typeof y === "number") {
          if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
          return asc ? x - y : y - x;
        }
        return asc ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, body: str, *, sortable: bool = False) -> str:
    """A whole HTML document: inline style, an inline script only for sortable tables, no external resource
    (the empty data-URI icon keeps the browser from asking for /favicon.ico)."""
    script = f"<script>{_SORT_JS}</script>\n" if sortable else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n{script}</body>\n</html>\n"
    )


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure(path: Path, caption: str) -> str:
    """A PNG embedded in the page; a missing file is said, not linked."""
    path = Path(path)
    if not path.is_file():
        return f"<p>(plot {_e(path.name)} was not written)</p>"
    return (
        f'<figure><img src="{png_data_uri(path)}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)} ({_e(path.name)})</figcaption></figure>"
    )


# --------------------------------------------------------------------------
# report.md's subset of Markdown
# --------------------------------------------------------------------------

_CODE = re.compile(r"`([^`]+)`")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def inline(text: str) -> str:
    """`code`, **bold** and *italic* of a report.md line (code spans are kept verbatim)."""
    parts = _CODE.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{_e(part)}</code>")
        else:
            s = _e(part)
            s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
            s = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", s)
            out.append(s)
    return "".join(out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().removeprefix("|").removesuffix("|").split(" | ")]


def _md_table(lines: list[str]) -> str:
    head = _cells(lines[0])
    right = [a.strip().endswith(":") for a in lines[1].strip().strip("|").split("|")]  # |---|---:|
    rows = ["<tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>" if any(head) else ""]
    for line in lines[2:]:
        cells = _cells(line)
        rows.append(
            "<tr>"
            + "".join(
                f'<td class="num">{inline(c)}</td>' if i < len(right) and right[i] else f"<td>{inline(c)}</td>"
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    body = "\n".join(rows[1:])
    return f'<div class="wide"><table>\n<thead>{rows[0]}</thead>\n<tbody>\n{body}\n</tbody></table></div>'


def markdown_html(lines: Sequence[str], base_dir: Path) -> str:
    """report.md's lines as HTML: headings, tables, lists, fenced code, paragraphs; an image line is embedded
    from ``base_dir``."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + _e("\n".join(lines[i + 1 : j])) + "</pre>")
            i = j + 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append(_md_table(list(lines[i:j])))
            i = j
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        elif m := _IMAGE.match(line.strip()):
            out.append(figure(base_dir / m.group(2), m.group(1)))
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "- ", "```")):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{inline(' '.join(para))}</p>")
    return "\n".join(out)


# --------------------------------------------------------------------------
# Every number of report.json, with its unit
# --------------------------------------------------------------------------


def report_numbers(data: Any, path: str = "") -> list[tuple[str, int | float]]:
    """Every number in ``data`` (a report) with its path: keys joined by '.', list items as [i]; booleans are
    not numbers here."""
    found: list[tuple[str, int | float]] = []
    if isinstance(data, Mapping):
        for k, v in data.items():
            found += report_numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += report_numbers(v, f"{path}[{i}]")
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        found.append((path, data))
    return found


# (suffix of a key, unit): the first that matches wins; {cur} is the report's currency
_UNIT_SUFFIXES = (
    ("kgco2_per_mtoken_per_s", "kgCO2 per (Mtoken/s)"),
    ("wh_per_mtoken_per_s", "Wh per (Mtoken/s)"),
    ("cost_per_mtoken_per_s", "{cur} per (Mtoken/s)"),
    ("gco2_per_mtoken", "gCO2/Mtoken"),
    ("gco2_per_mtoken_output", "gCO2/Mtoken"),
    ("wh_per_mtoken", "Wh/Mtoken"),
    ("wh_per_mtoken_output", "Wh/Mtoken"),
    ("cost_per_mtoken", "{cur}/Mtoken"),
    ("cost_per_mtoken_output", "{cur}/Mtoken"),
    ("mtokens_per_s", "Mtokens/s"),
    ("tokens_per_s", "tokens/s"),
    ("requests_per_s", "requests/s"),
    ("throughput_per_s", "requests/s"),
    ("_rps", "requests/s"),
    ("_g_per_kwh", "gCO2/kWh"),
    ("electricity_per_kwh", "{cur}/kWh"),
    ("gpu_hour_price", "{cur}/GPU-hour"),
    ("gpu_hour", "{cur}/GPU-hour"),
    ("gpu_hours", "h"),
    ("_cost", "{cur}"),
    ("_wh", "Wh"),
    ("_w", "W"),
    ("carbon_g", "gCO2"),
    ("_epoch_ms", "ms since 1970-01-01 UTC"),
    ("_ms", "ms"),
    ("_s", "s"),
    ("_gbs", "GB/s"),
    ("_gb", "GB"),
    ("_gib", "GiB"),
    ("mhz", "MHz"),
    ("bytes", "bytes"),
    ("_flops_saved", "FLOP"),
    ("hit_ratio", "fraction (0..1)"),
    ("_fraction", "fraction (0..1)"),
    ("_fraction_mean", "fraction (0..1)"),
    ("utilization", "fraction (0..1)"),
    ("utilization_mean", "fraction (0..1)"),
    ("utilization_peak", "fraction (0..1)"),
    ("attainment", "fraction (0..1)"),
    ("_blocks", "KV blocks"),
    ("_blocks_per_replica", "KV blocks"),
    ("tokens_per_replica", "tokens"),
    ("tokens", "tokens"),
    ("tokens_input", "tokens"),
    ("tokens_output", "tokens"),
    ("tokens_saved", "tokens"),
    ("tokens_gpu", "tokens"),
    ("tokens_host", "tokens"),
    ("cores", "cores"),
    ("gpus_per_host", "GPUs"),
    ("gpu_counts", "GPUs"),
    ("_hour", "hour of day"),
    ("_minutes", "min"),
    ("days", "days"),
    ("max_num_seqs", "sequences"),
    ("states", "tasks"),
)
_COUNTS = (
    "iterations",
    "preemptions",
    "evictions",
    "replicas",
    "requests",
    "transfers",
    "tasks",
    "fragments",
    "segments",
    "count",
    "gpus",
    "hits",
    "slo_met_requests",
)


_EXACT_UNITS = {"tp": "GPUs per replica", "replica": "index", "gpu_index": "index", "seed": "-", "tolerance": "-"}


def _key_unit(key: str, currency: str) -> str:
    k = key.lower()
    if k in _EXACT_UNITS:
        return _EXACT_UNITS[k].lstrip("-")
    for suffix, unit in _UNIT_SUFFIXES:
        if k.endswith(suffix):
            return unit.format(cur=currency)
    if k.startswith("num_") or k.endswith(_COUNTS):
        return "count"
    return ""


def unit_of(path: str, currency: str = "USD") -> str:
    """The unit of the number at ``path`` in a report, from its key's name or, for a key that names none (a
    percentile, a stage, a GPU type), from the key above it ('' where neither names one)."""
    keys = [k for k in re.split(r"\.|\[\d+\]", path) if k]
    if keys and keys[-1].lower() in _EXACT_UNITS:
        return _key_unit(keys[-1], currency)
    for key in reversed(keys[-2:]):
        unit = _key_unit(key, currency)
        if unit:
            return unit
    return ""


def _numbers_table(report: Mapping[str, Any]) -> str:
    cur = (report.get("efficiency") or {}).get("currency", "USD")
    rows = []
    for path, value in report_numbers(report):
        rows.append(
            f'<tr><td><code>{_e(path)}</code></td><td class="num" data-value="{_e(repr(value))}">{_e(fmt(value))}</td>'
            f"<td>{_e(unit_of(path, cur))}</td></tr>"
        )
    return (
        '<div class="wide"><table id="numbers" class="sortable">\n<thead><tr><th>field of report.json</th>'
        "<th>value</th><th>unit</th></tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>"
    )


def _kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>\n" for k, v in pairs if v not in (None, "", {}))
    return f"<table>\n{rows}</table>" if rows else "<p>not recorded</p>"


def _flat(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, Mapping):
        return [kv for k, v in d.items() for kv in _flat(v, f"{prefix}{k}." if isinstance(v, Mapping) else prefix + k)]
    return [(prefix, d)]


def _more_provenance(report: Mapping[str, Any]) -> str:
    """What report.md leaves out: the serving framework and the GPU profile with their sources."""
    config = (report.get("performance") or {}).get("config") or {}
    prov = report.get("provenance") or {}
    framework = config.get("framework") or {}
    profile = config.get("efficiency") or {}
    parts = ["<h2>Provenance of the models behind the numbers</h2>"]
    parts.append(
        "<p>OpenDC "
        + _e(prov.get("opendc_version") or "not run")
        + f", bridge {_e(prov.get('bridge_version') or '-')}, Java {_e(prov.get('java_version') or '-')}; "
        + f"platform {_e(prov.get('platform') or '-')}; "
        + f"working directory <code>{_e(prov.get('cwd') or '-')}</code>.</p>"
    )
    parts.append(f"<h3>Serving framework: {_e(framework.get('name', 'unknown'))}</h3>")
    parts.append(_kv_table(_flat(framework)))
    gpu = profile.get("gpu", config.get("gpu", "unknown"))
    parts.append(f"<h3>GPU profile: {_e(gpu)} ({_e(profile.get('status', '-'))})</h3>")
    parts.append(_kv_table(_flat(profile)))
    parts.append("<h3>Data files</h3>")
    inputs = prov.get("inputs") or []
    parts.append(
        "<table>\n<tr><th>input</th><th>path</th><th>bytes</th><th>sha256</th></tr>\n"
        + "".join(
            f"<tr><td>{_e(f.get('role'))}</td><td><code>{_e(f.get('path'))}</code></td>"
            f'<td class="num">{_e(fmt(f.get("bytes")))}</td><td><code>{_e(f.get("sha256"))}</code></td></tr>\n'
            for f in inputs
        )
        + "</table>"
    )
    return "\n".join(parts)


def render_run_html(report: Mapping[str, Any], out_dir: Path) -> str:
    """A run's report.html: report.md's sections (its plots embedded), the provenance report.md leaves out, and
    every number of report.json with its unit."""
    name = (report.get("experiment") or {}).get("name", "experiment")
    body = [markdown_html([line for section in SECTIONS for line in section(report)], Path(out_dir))]
    body.append(_more_provenance(report))
    body.append("<h2>Every number of report.json</h2>")
    body.append(
        "<p>Each number as report.md formats it (4 significant digits); the exact value is in the cell's "
        "<code>data-value</code>. Click a header to sort.</p>"
    )
    body.append(_numbers_table(report))
    return page(f"Kavier-OpenDC report: {name}", "\n".join(body), sortable=True)


def write_run_html(out_dir: Path, report: Mapping[str, Any]) -> Path:
    from kavier_opendc.base.atomic import atomic_write_text

    path = Path(out_dir) / RUN_HTML
    atomic_write_text(path, render_run_html(report, out_dir))
    return path


# --------------------------------------------------------------------------
# Comparison pages (sweeps and plans)
# --------------------------------------------------------------------------


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(float(v)) else None
    try:  # numpy and pandas scalars
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def comparison_table(columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]], formatter) -> str:
    """A sortable table: ``columns`` are (key, header); a numeric cell holds ``formatter(value)`` as text and
    the exact value in data-value (empty where the value is missing)."""
    numeric = {
        k
        for k, _ in columns
        if any(_number(r.get(k)) is not None for r in rows)
        and all(_number(r.get(k)) is not None or r.get(k) is None or _is_nan(r.get(k)) for r in rows)
    }
    head = "".join(f"<th>{_e(h)}</th>" for _, h in columns)
    body = []
    for r in rows:
        cells = []
        for k, _ in columns:
            v = r.get(k)
            if k in numeric:
                n = _number(v)
                cells.append(f'<td class="num" data-value="{"" if n is None else _e(repr(n))}">{_e(formatter(v))}</td>')
            else:
                cells.append(f"<td>{_e(formatter(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="wide"><table id="comparison" class="sortable">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody></table></div>"
    )


def pareto_flags(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> list[bool]:
    """Whether each row is on the Pareto front of (x, y), both lower-is-better: no other row is as good in both
    and better in one. Rows without both numbers are not on it."""
    pts = [(_number(r.get(x)), _number(r.get(y))) for r in rows]
    ok = [(a, b) for a, b in pts if a is not None and b is not None]
    return [
        a is not None and b is not None and not any(c <= a and d <= b and (c < a or d < b) for c, d in ok)
        for a, b in pts
    ]


def _is_nan(v: Any) -> bool:
    try:
        return isinstance(v, float) and math.isnan(v) or (v is not None and v != v)
    except (TypeError, ValueError):
        return False


def definitions_html(keys: Iterable[str]) -> str:
    """The definitions of the metrics ``keys`` (report.py's and efficiency.py's text), and of the latencies."""
    items = [f"<li><code>{_e(k)}</code>: {_e(DEFINITIONS[k])}</li>" for k in keys if k in DEFINITIONS]
    items.append(f"<li>{_e(LATENCY_DEFINITION)}</li>")
    return "<h2>Definitions</h2>\n<ul>\n" + "\n".join(items) + "\n</ul>"


def render_comparison_html(
    title: str,
    intro: Sequence[str],
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Mapping[str, Any]],
    plots: Sequence[tuple[Path, str]],
    formatter,
    *,
    preformatted: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """A sweep's or a plan's page: intro paragraphs, optional preformatted text (a plan's summary), the sortable
    table, the plots embedded and the definitions of the columns."""
    body = [f"<h1>{_e(title)}</h1>"]
    body += [f"<p>{inline(p)}</p>" for p in intro]
    if preformatted:
        body.append(f"<pre>{_e(preformatted)}</pre>")
    body.append("<h2>Comparison</h2>")
    body.append("<p>Click a header to sort by that column (again to reverse); missing values sort last.</p>")
    body.append(comparison_table(columns, rows, formatter))
    body += [f"<p>{inline(n)}</p>" for n in notes]
    if plots:
        body.append("<h2>Plots</h2>")
        body += [figure(p, caption) for p, caption in plots]
    keys = {k for k, _ in columns} | {k.replace("_p50", "").replace("_p99", "").replace("_q", "") for k, _ in columns}
    body.append(definitions_html([k for k in DEFINITIONS if k in keys]))
    return page(title, "\n".join(body), sortable=True)


def write_comparison_html(path: Path, *args, **kwargs) -> Path:
    """:func:`render_comparison_html` written atomically to ``path``."""
    from kavier_opendc.base.atomic import atomic_write_text

    atomic_write_text(Path(path), render_comparison_html(*args, **kwargs))
    return Path(path)


__all__ = [
    "PLAN_HTML",
    "RUN_HTML",
    "SWEEP_HTML",
    "comparison_table",
    "markdown_html",
    "page",
    "pareto_flags",
    "render_comparison_html",
    "render_run_html",
    "report_numbers",
    "unit_of",
    "write_comparison_html",
    "write_run_html",
]
