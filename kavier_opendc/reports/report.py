"""report.json and report.md of a run: performance, sustainability, efficiency, provenance."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kavier_opendc.reports.efficiency import DEFINITIONS

REPORT_JSON = "report.json"
REPORT_MD = "report.md"

# (key, label, unit) of the efficiency table in report.md
EFFICIENCY_ROWS = [
    ("wh_per_mtoken", "Energy per million tokens (input + output)", "Wh/Mtoken"),
    ("wh_per_mtoken_output", "Energy per million output tokens", "Wh/Mtoken"),
    ("gco2_per_mtoken", "Carbon per million tokens (input + output)", "gCO2/Mtoken"),
    ("gco2_per_mtoken_output", "Carbon per million output tokens", "gCO2/Mtoken"),
    ("cost_per_mtoken", "Cost per million tokens (input + output)", "{cur}/Mtoken"),
    ("cost_per_mtoken_output", "Cost per million output tokens", "{cur}/Mtoken"),
    ("gpu_hours", "GPU-hours", "h"),
    ("gpu_cost", "GPU cost", "{cur}"),
    ("electricity_cost", "Electricity cost", "{cur}"),
    ("total_cost", "Total cost", "{cur}"),
    ("goodput_rps", "Goodput (requests meeting both SLOs)", "req/s"),
    ("goodput_tokens_per_s", "Goodput in tokens", "tokens/s"),
    ("slo_attainment", "SLO attainment", "fraction"),
    ("throughput_mtokens_per_s", "Throughput", "Mtokens/s"),
    ("cost_per_mtoken_per_s", "Kavier paper: financial efficiency", "{cur} per (Mtoken/s)"),
    ("wh_per_mtoken_per_s", "Kavier paper: energy efficiency", "Wh per (Mtoken/s)"),
    ("kgco2_per_mtoken_per_s", "Kavier paper: carbon efficiency", "kgCO2 per (Mtoken/s)"),
]

# rows shown only when OpenDC ran (the efficiency report has them then): PUE and embodied carbon
OVERHEAD_ROWS = [
    ("pue", "PUE (facility / IT energy)", ""),
    ("facility_wh_per_mtoken", "Facility energy per million tokens", "Wh/Mtoken"),
    ("operational_gco2_per_mtoken", "Operational carbon per million tokens (facility)", "gCO2/Mtoken"),
    ("embodied_gco2_per_mtoken", "Embodied carbon per million tokens (amortised)", "gCO2/Mtoken"),
    ("total_gco2_per_mtoken", "Operational + embodied carbon per million tokens", "gCO2/Mtoken"),
]


#: The latencies' definition (report.md, report.html and the comparison pages say it in these words).
LATENCY_DEFINITION = (
    "TTFT: arrival to first output token; TPOT: (last token - first token) / (output tokens - 1); "
    "end-to-end: arrival to last token; percentiles over finished requests."
)


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table: 4 significant digits, thousands separators for big ones."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        if abs(x) >= 1000:
            return f"{x:,.1f}"
        return f"{x:.{digits}g}"
    return str(x)


def _ms(d: Mapping[str, Any] | None, key: str) -> str:
    if not d or d.get(key) is None:
        return "n/a"
    return f"{d[key] * 1000:.1f}"


def _title(report: Mapping[str, Any]) -> list[str]:
    """The title line and what produced the report."""
    sus = report.get("sustainability")
    prov = report["provenance"]
    exp = report.get("experiment", {})
    lines: list[str] = []
    add = lines.append
    add(f"# Kavier-OpenDC report: {exp.get('name', 'experiment')}")
    add("")
    add(
        f"Generated {prov.get('finished_utc', '')} by kavier-opendc {prov.get('kavier_opendc_version', '')}"
        + (f" with OpenDC {prov['opendc_version']}" if prov.get("opendc_version") else "")
        + ("" if sus is not None else " (performance only: OpenDC was not run)")
        + "."
    )
    add("")
    return lines


def _setup(report: Mapping[str, Any]) -> list[str]:
    """What was simulated: replicas, serving, trace, datacenter, carbon, SLOs, seed."""
    perf = report["performance"]
    eff = report["efficiency"]
    prov = report["provenance"]
    exp = report.get("experiment", {})
    lines: list[str] = []
    add = lines.append
    add("## Setup")
    add("")
    add("| | |")
    add("|---|---|")
    for g in exp.get("replica_groups", []):
        add(
            f"| replicas | {g['replicas']} replica(s) of {g['model']}, each on {g['tp']} x {g['gpu']} "
            f"(tensor parallel {g['tp']}) |"
        )
    srv = exp.get("serving", {})
    pc = srv.get("prefix_cache", {})
    effective = (perf.get("config") or {}).get("prefix_cache")
    pc_text = effective or (pc.get("policy") if isinstance(pc, dict) else pc) or "engine default"
    extra = {k: v for k, v in (pc.items() if isinstance(pc, dict) else []) if k != "policy"}
    if extra:
        pc_text += " (" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")"
    # the limits the engine used (vLLM v1's defaults for the GPU and usage when the experiment leaves them out)
    from kavier_opendc.engine.outputs import batch_limits_origin

    run_cfg = perf.get("config") or {}
    limits = {k: run_cfg.get(k, srv.get(k)) for k in ("max_num_seqs", "max_batched_tokens")}
    origin = "" if batch_limits_origin(run_cfg) == "given" else f" ({batch_limits_origin(run_cfg)})"
    add(
        f"| serving | router {srv.get('router')}, max_num_seqs {limits['max_num_seqs']}, max_batched_tokens "
        f"{limits['max_batched_tokens']}{origin}, gpu_memory_utilization {srv.get('gpu_memory_utilization')}, "
        f"KV cache {'on' if srv.get('kv_cache') else 'off'}, prefix cache {pc_text} |"
    )
    tr = exp.get("trace", {})
    add(
        f"| trace | {tr.get('kind')}: {tr.get('path') or 'inline description'} ({fmt(perf.get('num_requests'))} "
        "requests) |"
    )
    if report.get("datacenter"):
        dc = report["datacenter"]
        hosts = "; ".join(
            f"{h['count']} x {h['name']} ({h['gpus_per_host']} x {h.get('gpu') or '-'} GPUs, "
            f"{h['cpu']['count']} x {h['cpu']['cores']} cores)"
            for h in dc.get("hosts", [])
        )
        add(f"| datacenter | {hosts}; start {dc.get('start')} UTC |")
    if exp.get("carbon"):
        c = exp["carbon"]
        params = ", ".join(f"{k}={v}" for k, v in (c.get("params") or {}).items())
        add(
            f"| carbon trace | {c['kind']}"
            + (f": {c['path']}" if c.get("path") else "")
            + (f" ({params})" if params else "")
            + (
                f"; the run lies outside its dates: {Path(c['source_trace']).name} moved by "
                f"{c['shift_years']:+d} year(s) to the same day of year (carbon.align), longest gap "
                f"{c['longest_gap_s'] / 3600:.2f} h"
                if c.get("align") == "same-day-of-year"
                else ""
            )
            + " |"
        )
    slo = eff.get("slo", {})
    add(f"| SLOs | TTFT <= {slo.get('ttft_s', 'n/a')} s, TPOT <= {slo.get('tpot_s', 'n/a')} s |")
    add(f"| seed | {prov.get('seed')} |")
    add("")
    return lines


def _performance(report: Mapping[str, Any]) -> list[str]:
    """Throughput, latency percentiles and cache behaviour (from the engine)."""
    perf = report["performance"]
    lines: list[str] = []
    add = lines.append
    add("## Performance")
    add("")
    add(
        f"{fmt(perf['num_finished'])} of {fmt(perf['num_requests'])} requests finished "
        f"({fmt(perf.get('num_rejected', 0))} rejected) in a makespan of {perf['makespan_s']:.1f} s: "
        f"{perf['output_tokens_per_s']:.1f} output tokens/s, {perf['total_tokens_per_s']:.1f} total tokens/s, "
        f"{perf.get('request_throughput_per_s', 0):.3f} requests/s."
    )
    add("")
    add("| latency (ms) | mean | p50 | p90 | p99 |")
    add("|---|---:|---:|---:|---:|")
    for key, label in (
        ("ttft_s", "TTFT (arrival to first token)"),
        ("tpot_s", "TPOT (per output token after the first)"),
        ("e2e_s", "end-to-end"),
        ("queue_s", "queueing"),
    ):
        d = perf.get(key)
        if d:
            add(f"| {label} | {_ms(d, 'mean')} | {_ms(d, 'p50')} | {_ms(d, 'p90')} | {_ms(d, 'p99')} |")
    add("")
    add(
        f"Prefix-cache hit ratio {perf.get('prefix_cache_hit_ratio', 0):.1%} (cached prompt tokens / all prompt "
        f"tokens), preemptions {fmt(perf.get('preemptions'))}, GPUs busy "
        f"{perf.get('gpu_busy_fraction_mean', 0):.1%} of the time (mean power-relevant activity "
        f"{perf.get('gpu_utilization_mean', 0):.3f}, what OpenDC's power model gets), peak KV-cache utilisation "
        f"{perf.get('kv_utilization_peak', 0):.3f}."
    )
    if (perf.get("trace") or {}).get("offline_batch"):
        add("")
        add(
            "Note: the trace has no arrival times, so every request arrives at 0 (an offline batch); latencies "
            "include waiting for the rest of the batch."
        )
    add("")
    return lines


def _pools(report: Mapping[str, Any]) -> list[str]:
    """A disaggregated run's pools and KV link (engine), and each pool's energy where OpenDC gives it."""
    dis = report["performance"].get("disaggregation")
    if not dis:
        return []
    per_pool = {p["pool"]: p for p in ((report.get("sustainability") or {}).get("per_pool") or [])}
    lines = [
        "## Disaggregated pools",
        "",
        "| pool | replicas x TP x GPU | busy | requests | energy (Wh) | GPU energy (Wh) | hosts |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    pools = dis.get("pools") or [{"name": role, **(dis.get(f"{role}_pool") or {})} for role in ("prefill", "decode")]
    for p in pools:
        role, e = p["name"], per_pool.get(p["name"]) or {}
        energy = (
            fmt(e["energy_wh"])
            if e.get("energy_wh") is not None
            else "shared host(s) " + ", ".join(e["shared_hosts"])
            if e.get("shared_hosts")
            else "-"
        )
        gpu_energy = fmt(e["gpu_energy_wh"]) if e.get("gpu_energy_wh") is not None else "-"
        lines.append(
            f"| {role} | {p.get('replicas')} x {p.get('tp')} x {p.get('gpu')} | "
            f"{(p.get('busy_fraction') or 0):.1%} | {fmt(p.get('requests'))} | {energy} | {gpu_energy} | "
            f"{', '.join(e.get('hosts') or []) or '-'} |"
        )
    link = dis.get("link") or {}
    wait = dis.get("decode_wait_s") or {}
    lines += [
        "",
        f"KV link: {fmt(link.get('gbs'))} GB/s, {link.get('mode')} ({link.get('policy', 'fifo')}), "
        f"{(link.get('bytes_moved') or 0) / 1e9:.2f} GB in {fmt(link.get('transfers'))} transfers, busy "
        f"{(link.get('busy_fraction') or 0):.1%}, transfer mean {_ms(link, 'transfer_s_mean')} ms / p99 "
        f"{_ms(link, 'transfer_s_p99')} ms, {_ms(link, 'exposed_s_mean')} ms of it after the prefill on "
        f"average; decode admission wait mean {_ms(wait, 'mean')} ms / p99 {_ms(wait, 'p99')} ms. "
        "A pool's energy is its hosts' (OpenDC); a host that ran both pools is not split between them.",
        "",
    ]
    return lines


def _sustainability(report: Mapping[str, Any]) -> list[str]:
    """Energy, power and carbon from OpenDC, per host and per GPU."""
    sus = report.get("sustainability")
    lines: list[str] = []
    add = lines.append
    add("## Sustainability (OpenDC)")
    add("")
    if sus is None:
        add("Not computed: OpenDC was not run (`--no-opendc` or `opendc.enabled: false`).")
    else:
        add("| metric | value |")
        add("|---|---:|")
        add(f"| energy, all hosts | {fmt(sus['energy_wh'])} Wh |")
        kv = sus.get("kv_transfer")
        if kv:  # disaggregated runs: the KV links' energy, beside OpenDC's (which has no network model)
            add(f"| KV transfers over the links (engine, not OpenDC) | {fmt(kv['energy_wh'])} Wh |")
            add(f"| energy, hosts and KV transfers | {fmt(sus['energy_wh_with_kv_transfer'])} Wh |")
        for k, label in (
            ("gpu_energy_wh", "of which GPUs"),
            ("cpu_energy_wh", "of which CPUs"),
            ("idle_energy_wh", "of which idle (static) power"),
            ("dynamic_energy_wh", "of which utilisation-dependent"),
        ):
            if sus.get(k) is not None:
                add(f"| {label} | {fmt(sus[k])} Wh |")
        add(f"| average power | {fmt(sus['avg_power_w'])} W |")
        add(f"| peak power | {fmt(sus['peak_power_w'])} W |")
        add(f"| carbon emissions | {fmt(sus['carbon_g'])} gCO2 |")
        if sus.get("carbon_intensity_avg_g_per_kwh") is not None:
            add(f"| energy-weighted grid carbon intensity | {fmt(sus['carbon_intensity_avg_g_per_kwh'])} gCO2/kWh |")
        add(f"| simulated duration | {fmt(sus.get('duration_s'))} s |")
        add("")
        if sus.get("per_host"):
            add("| host | energy (Wh) | GPU (Wh) | CPU (Wh) | idle (Wh) | avg power (W) | peak power (W) |")
            add("|---|---:|---:|---:|---:|---:|---:|")
            for h in sus["per_host"]:
                add(
                    f"| {h['host_name']} | {fmt(h['energy_wh'])} | {fmt(h.get('gpu_energy_wh'))} | "
                    f"{fmt(h.get('cpu_energy_wh'))} | {fmt(h.get('idle_energy_wh'))} | {fmt(h.get('avg_power_w'))} | "
                    f"{fmt(h.get('peak_power_w'))} |"
                )
            add("")
        if sus.get("per_gpu"):
            add("| host | GPU | energy (Wh) | avg power (W) | peak power (W) | avg utilisation |")
            add("|---|---:|---:|---:|---:|---:|")
            for g in sus["per_gpu"]:
                add(
                    f"| {g['host_name']} | {g['gpu_index']} | {fmt(g['energy_wh'])} | {fmt(g.get('avg_power_w'))} | "
                    f"{fmt(g.get('peak_power_w'))} | {fmt(g.get('avg_utilization'))} |"
                )
            add("")
        add("Energy is OpenDC's `energy_usage` (J) summed over hosts and intervals and divided by 3600 (J to Wh).")
        note = ((sus.get("export") or {}).get("power_curve") or {}).get("note")
        if note:
            add("")
            add(f"Approximation: {note}.")
    add("")
    return lines


def _efficiency(report: Mapping[str, Any]) -> list[str]:
    """Per-token energy, carbon and cost, and the Kavier paper's metrics."""
    eff = report["efficiency"]
    cur = eff.get("currency", "USD")
    lines: list[str] = []
    add = lines.append
    add("## Efficiency")
    add("")
    add("| metric | value | unit | definition |")
    add("|---|---:|---|---|")
    for key, label, unit in EFFICIENCY_ROWS + [r for r in OVERHEAD_ROWS if r[0] in eff]:
        add(f"| {label} (`{key}`) | {fmt(eff.get(key))} | {unit.format(cur=cur)} | {DEFINITIONS.get(key, '')} |")
    add("")
    add(
        f"Tokens: {fmt(eff['tokens'])} ({fmt(eff['tokens_input'])} input + {fmt(eff['tokens_output'])} output) "
        f"over a window of {eff['window_s']:.1f} s. Prices: "
        + ", ".join(f"{k} {v:g} {cur}/GPU-hour" for k, v in eff.get("gpu_hour_price", {}).items())
        + (
            f", electricity {eff['electricity_per_kwh']:g} {cur}/kWh"
            if eff.get("electricity_per_kwh") is not None
            else ", electricity not priced"
        )
        + "."
    )
    add("")
    counted = ", ".join(f"{n} x {k}" for k, n in eff.get("gpu_counts", {}).items())
    serving = ", ".join(f"{n} x {k}" for k, n in (eff.get("serving_gpu_counts") or {}).items())
    if eff.get("gpu_counts_basis") == "datacenter":
        add(
            f"Hardware counted: cost and energy both count the datacenter's {counted} GPU(s) (OpenDC's energy "
            f"includes idle GPUs, and they are paid for); the replicas use {serving}."
        )
    else:
        add(f"Hardware counted: the cost counts the {counted} GPU(s) serving the replicas (no OpenDC energy).")
    add("")
    add(
        "**Comparability with the Kavier paper.** The paper reports efficiency per *million tokens per second*: a "
        "total (cost, Wh, kgCO2) divided by the throughput in Mtokens/s (`*_per_mtoken_per_s` above). Dividing by "
        "a throughput rewards fast runs twice, so the per-million-token metrics (`*_per_mtoken`) are the ones to "
        "compare configurations with; the paper's are given for comparison with its numbers. The prototype's "
        "energy figure divided joules by 1000 to get 'Wh'; here 1 Wh = 3600 J."
    )
    add("")
    return lines


def _plots(report: Mapping[str, Any]) -> list[str]:
    """The run's PNG plots."""
    lines: list[str] = []
    add = lines.append
    plots = report.get("plots") or []
    if plots:
        add("## Plots")
        add("")
        for p in plots:
            add(f"![{Path(p).stem}]({p})")
            add("")
    return lines


def _definitions(report: Mapping[str, Any]) -> list[str]:
    """What each metric means."""
    lines: list[str] = []
    add = lines.append
    add("## Definitions")
    add("")
    for k, v in DEFINITIONS.items():
        add(f"- `{k}`: {v}")
    add(f"- {LATENCY_DEFINITION}")
    add("")
    return lines


def _provenance(report: Mapping[str, Any]) -> list[str]:
    """Command, versions, seed, stage times and input checksums."""
    prov = report["provenance"]
    lines: list[str] = []
    add = lines.append
    add("## Provenance")
    add("")
    add(f"- command: `{prov.get('command')}`")
    add(
        f"- kavier-opendc {prov.get('kavier_opendc_version')}, Python {prov.get('python')}, "
        + ", ".join(f"{k} {v}" for k, v in (prov.get("libraries") or {}).items())
    )
    if prov.get("opendc_version"):
        add(f"- OpenDC {prov['opendc_version']} (bridge {prov.get('bridge_version')}, Java {prov.get('java_version')})")
    add(
        f"- seed {prov.get('seed')}; started {prov.get('started_utc')}, finished {prov.get('finished_utc')} "
        f"({prov.get('wall_s', 0):.1f} s)"
    )
    add("- stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in (prov.get("stages_s") or {}).items()))
    add("")
    add("| input | sha256 | path |")
    add("|---|---|---|")
    for f in prov.get("inputs", []):
        add(f"| {f['role']} | `{f['sha256'][:16]}…` | {f['path']} |")
    add("")
    return lines


def _deferral(report: Mapping[str, Any]) -> list[str]:
    """Carbon-aware deferral (engine/deferral.py): carbon saved against latency added, missed deadlines."""
    from kavier_opendc.engine.deferral import describe

    d = report["performance"].get("deferral")
    if not d:
        return []
    lines = ["## Carbon-aware deferral", ""]
    lines += [f"- {line}" for line in describe(d)]
    lines += [
        "",
        "The carbon here is the engine's (the GPUs at the catalogue's linear power model, both runs simulated), "
        "not OpenDC's: OpenDC ran the run with deferral only (its carbon is under Sustainability). With "
        "deferral, requests.parquet's arrival_s is a request's release to the router, submitted_s its arrival "
        "in the trace, held_s the difference; its latencies count from the release.",
        "",
    ]
    return lines


SECTIONS = (
    _title,
    _setup,
    _performance,
    _deferral,
    _pools,
    _sustainability,
    _efficiency,
    _plots,
    _definitions,
    _provenance,
)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The human summary of a run, with the metric definitions: one section after another."""
    return "\n".join(line for section in SECTIONS for line in section(report))


def write_report(out_dir: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write report.md, then report.json (atomically, report.json last)."""
    from kavier_opendc.base.atomic import atomic_write_text, write_json_atomic

    out_dir = Path(out_dir)
    md = out_dir / REPORT_MD
    atomic_write_text(md, render_markdown(report))
    js = out_dir / REPORT_JSON
    write_json_atomic(js, dict(report))
    return js, md
