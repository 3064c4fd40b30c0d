"""reports/html.py without a browser: report.md's Markdown subset, units, the Pareto flags, the sortable table."""

from __future__ import annotations

import math

from kavier_opendc.reports import html as H


def test_markdown_table_alignment_and_inline_code():
    out = H.markdown_html(["| metric | value |", "|---|---:|", "| `a*b` and *c* **d** | 1.5 Wh |"], base_dir=None)
    assert "<th>metric</th><th>value</th>" in out
    assert '<td><code>a*b</code> and <em>c</em> <strong>d</strong></td><td class="num">1.5 Wh</td>' in out
    # an empty header row (report.md's setup table) leaves no empty header cells
    assert "<th>" not in H.markdown_html(["| | |", "|---|---|", "| seed | 42 |"], base_dir=None)


def test_markdown_escapes_text_and_keeps_code_verbatim():
    out = H.markdown_html(["- `x < y` & <b>not bold</b>", "", "```", "a <b>", "```"], base_dir=None)
    assert "<li><code>x &lt; y</code> &amp; &lt;b&gt;not bold&lt;/b&gt;</li>" in out
    assert "<pre>a &lt;b&gt;</pre>" in out


def test_units_from_key_names():
    cases = {
        "sustainability.energy_wh": "Wh",
        "sustainability.per_host[1].peak_power_w": "W",
        "performance.ttft_s.p99": "s",
        "provenance.stages_s.opendc": "s",
        "efficiency.gpu_hour_price.A100-80GB": "EUR/GPU-hour",
        "efficiency.cost_per_mtoken": "EUR/Mtoken",
        "efficiency.cost_per_mtoken_per_s": "EUR per (Mtoken/s)",
        "efficiency.kgco2_per_mtoken_per_s": "kgCO2 per (Mtoken/s)",
        "efficiency.gco2_per_mtoken_output": "gCO2/Mtoken",
        "efficiency.throughput_mtokens_per_s": "Mtokens/s",
        "performance.output_tokens_per_s": "tokens/s",
        "performance.prefix_cache_hit_ratio": "fraction (0..1)",
        "sustainability.carbon_intensity_avg_g_per_kwh": "gCO2/kWh",
        "sustainability.start_epoch_ms": "ms since 1970-01-01 UTC",
        "sustainability.tasks.finish_time_ms[3]": "ms",
        "performance.num_requests": "count",
        "performance.replicas[0].tp": "GPUs per replica",
        "provenance.seed": "",
        "performance.config.efficiency.gemm_mbu": "",
    }
    for path, unit in cases.items():
        assert H.unit_of(path, "EUR") == unit, path


def test_pareto_flags_by_hand():
    rows = [{"x": 1, "y": 3}, {"x": 2, "y": 2}, {"x": 3, "y": 1}, {"x": 3, "y": 3}, {"x": None, "y": 0}]
    assert H.pareto_flags(rows, "x", "y") == [True, True, True, False, False]
    # a tie in both is on the front twice; dominated in one only with the other equal is not
    assert H.pareto_flags([{"x": 1, "y": 1}, {"x": 1, "y": 1}, {"x": 1, "y": 2}], "x", "y") == [True, True, False]


def test_comparison_table_cells_and_no_network():
    rows = [{"run": "a", "v": 0.123456, "s": "done"}, {"run": "b", "v": math.nan, "s": "failed"}]
    out = H.comparison_table([("run", "run"), ("v", "value"), ("s", "status")], rows, lambda v: str(v))
    assert '<td class="num" data-value="0.123456">0.123456</td>' in out
    assert '<td class="num" data-value="">nan</td>' in out  # missing: sorts last
    assert "<td>done</td>" in out and 'class="sortable"' in out
    page = H.page("t", out, sortable=True)
    assert "http://" not in page and "https://" not in page and "<script>" in page
    assert "<script>" not in H.page("t", "<p>x</p>")
