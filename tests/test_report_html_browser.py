"""report.html, sweep.html and plan.html in a real headless browser (Debian's chromium and chromedriver, driven
by selenium): each page loads without console errors, its tables hold the numbers of report.json / the
comparison / plan.json as the Markdown reports format them, every image renders, the sortable tables sort when
a header is clicked, no resource comes from the network, and a screenshot of each page is taken.

One demo run with the real OpenDC (module-scoped), a 3-configuration sweep of the demo experiment (on 300
requests) and a 2-shape plan, both without OpenDC, keep the file at well under a minute. `.ci/run` installs chromium and
chromium-driver where they are missing, so in CI none of this is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import skip_without_opendc
from kavier_opendc.experiments.plan import _f as plan_fmt
from kavier_opendc.experiments.sweep import report_row
from kavier_opendc.reports.efficiency import DEFINITIONS
from kavier_opendc.reports.report import EFFICIENCY_ROWS, fmt

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "kavier_opendc" / "data"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def kavier(*args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


# ------------------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def driver():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is in the test extra: pip install -e '.[test]'"
    )
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver not installed: apt-get install chromium chromium-driver (.ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield d
    d.quit()


def load(driver, path: Path) -> list[dict]:
    """Open ``path``; returns the console messages at level SEVERE (errors) logged while it loaded."""
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(path.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def check_images(driver, expected: int) -> None:
    imgs = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.src.slice(0, 22)])"
    )
    assert len(imgs) == expected
    for complete, w, h, src in imgs:
        assert complete and w > 0 and h > 0
        assert src == "data:image/png;base64,"


def screenshot(driver, path: Path) -> Path:
    """The top of the page (after the checks, which scroll), as a PNG under the test's tmp path."""
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    return path


def table_cells(driver, selector: str) -> list[list[tuple[str, str | None]]]:
    """The body rows of a table: each cell's text and data-value."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr')).map(r => "
        "Array.from(r.cells).map(c => [c.textContent, c.getAttribute('data-value')]))",
        selector,
    )


def headers(driver, selector: str) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' thead th')).map(h => h.textContent)", selector
    )


def click_header(driver, selector: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    [th] = [h for h in driver.find_elements(By.CSS_SELECTOR, f"{selector} thead th") if h.text.startswith(text)]
    th.click()


class _Resources(HTMLParser):
    """Every src/href of the page, by tag."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [(tag, v or "") for k, v in attrs if k in ("src", "href")]


def assert_offline(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    parser = _Resources()
    parser.feed(text)
    assert parser.refs, "the page should have images"
    for tag, ref in parser.refs:
        assert not ref.startswith(("http://", "https://", "//")), (tag, ref[:80])
        assert ref.startswith("data:"), (tag, ref[:80])  # nothing beside the file either: it travels alone
    assert "@import" not in text and "url(http" not in text


def walk_numbers(data, path=""):
    """Every number of a report with its path (keys joined by '.', list items [i]), booleans left out."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from walk_numbers(v, f"{path}.{k}" if path else k)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from walk_numbers(v, f"{path}[{i}]")
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        yield path, data


# ------------------------------------------------------------------------------ a demo run


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    skip_without_opendc()
    out = tmp_path_factory.mktemp("html") / "demo"
    r = kavier("demo", "--out", out)
    assert r.returncode == 0, r.stderr
    return out, json.loads((out / "report.json").read_text())


def test_run_report_in_browser(demo, driver, tmp_path):
    out, report = demo
    page = out / "report.html"
    assert load(driver, page) == []
    assert driver.title == f"Kavier-OpenDC report: {report['experiment']['name']}"
    check_images(driver, len(report["plots"]))
    assert len(report["plots"]) == 6  # with OpenDC: latency, utilisation, cache, power, carbon, energy
    # every number of report.json, as report.md formats it, with the exact value beside it
    rows = {cells[0][0]: cells for cells in table_cells(driver, "#numbers")}
    numbers = dict(walk_numbers(report))
    assert set(rows) == set(numbers) and len(numbers) > 200
    for path, value in numbers.items():
        (_, _), (text, exact), (unit, _) = rows[path]
        assert text == fmt(value) and float(exact) == value, path
    assert rows["sustainability.energy_wh"][2][0] == "Wh" and rows["performance.ttft_s.p99"][2][0] == "s"
    assert rows["efficiency.cost_per_mtoken"][2][0] == "USD/Mtoken"
    assert rows["efficiency.kgco2_per_mtoken_per_s"][2][0] == "kgCO2 per (Mtoken/s)"
    # the summary tables are report.md's, cell for cell
    text = driver.execute_script("return document.body.innerText")
    sus, eff, perf = report["sustainability"], report["efficiency"], report["performance"]
    cells = driver.execute_script(
        "return Array.from(document.querySelectorAll('table tr')).map(r => Array.from(r.cells).map(c => c.textContent))"
    )
    by_label = {c[0]: c[1:] for c in cells if c}
    assert by_label["energy, all hosts"] == [f"{fmt(sus['energy_wh'])} Wh"]
    assert by_label["peak power"] == [f"{fmt(sus['peak_power_w'])} W"]
    assert by_label["carbon emissions"] == [f"{fmt(sus['carbon_g'])} gCO2"]
    ttft = perf["ttft_s"]
    assert by_label["TTFT (arrival to first token)"] == [f"{ttft[k] * 1000:.1f}" for k in ("mean", "p50", "p90", "p99")]
    for key, label, unit in EFFICIENCY_ROWS:
        assert by_label[f"{label} ({key})"][:2] == [fmt(eff.get(key)), unit.format(cur=eff["currency"])], key
    per_host = {c[0]: c[1:] for c in cells if len(c) == 7}  # host | energy | GPU | CPU | idle | avg | peak
    for host in sus["per_host"]:
        assert per_host[host["host_name"]] == [
            fmt(host.get(k)) for k in ("energy_wh", "gpu_energy_wh", "cpu_energy_wh", "idle_energy_wh")
        ] + [fmt(host.get(k)) for k in ("avg_power_w", "peak_power_w")]
    # every metric's definition, and the provenance
    for key, definition in DEFINITIONS.items():
        assert f"{key}: {definition}" in text
    prov = report["provenance"]
    assert f"OpenDC {prov['opendc_version']}" in text and prov["opendc_version"]
    assert f"Serving framework: {perf['config']['framework']['name']}" in text
    assert f"GPU profile: {perf['config']['efficiency']['gpu']} ({perf['config']['efficiency']['status']})" in text
    for f in prov["inputs"]:
        assert f["path"] in text and f["sha256"] in text
    # the numbers table sorts by value
    click_header(driver, "#numbers", "value")
    values = [float(c[1][1]) for c in table_cells(driver, "#numbers")]
    assert values == sorted(values)
    assert_offline(page)
    screenshot(driver, tmp_path / "report.png")


def test_browser_reports_a_console_error(driver, tmp_path):
    """The console check can fail: a page whose script throws is seen."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    errors = load(driver, bad)
    assert errors and "undefinedFunction" in errors[0]["message"]


# ------------------------------------------------------------------------------ a sweep


def test_sweep_page_in_browser(driver, tmp_path):
    # the demo experiment on a tenth of its workload (300 requests): the page is the point, not the numbers
    workload = yaml.safe_load((DATA / "demo_workload.yaml").read_text()) | {"num_requests": 300}
    (tmp_path / "workload.yaml").write_text(yaml.safe_dump(workload))
    experiment = yaml.safe_load((DATA / "demo_experiment.yaml").read_text()) | {"trace": "workload.yaml"}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    doc = {"name": "html-sweep", "base": "experiment.yaml", "axes": {"serving.replicas": [2, 3, 4]}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "sweep"
    r = kavier("sweep", tmp_path / "sweep.yaml", "--out", out, "--no-opendc", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    assert "sweep.html" in r.stdout
    page = out / "sweep.html"
    assert load(driver, page) == []
    check_images(driver, 2)  # the trade-off and the metrics (no carbon trade-off without OpenDC)
    head = headers(driver, "#comparison")
    assert head[:2] == ["run", "serving.replicas"] and head[-1] == "status"
    table = pd.read_csv(out / "comparison.csv")
    rows = table_cells(driver, "#comparison")
    assert len(rows) == 3
    col = {h: i for i, h in enumerate(head)}
    for cells in rows:
        rid = cells[0][0]
        rep = json.loads((out / "runs" / rid / "report.json").read_text())
        flat = report_row(rep)
        assert cells[col["TTFT p99 (s)"]][0] == fmt(flat["ttft_p99_s"])
        assert float(cells[col["TTFT p99 (s)"]][1]) == flat["ttft_p99_s"]
        assert cells[col["USD/Mtoken"]][0] == fmt(flat["cost_per_mtoken"])
        assert cells[col["status"]][0] == "done"
        assert table.set_index("run").loc[rid, "ttft_p99_s"] == pytest.approx(flat["ttft_p99_s"], rel=1e-12)
    # Pareto front of (TTFT p99, cost/Mtoken): checked by hand over the rows
    pts = {c[0][0]: (float(c[col["TTFT p99 (s)"]][1]), float(c[col["USD/Mtoken"]][1])) for c in rows}
    front = {r for r, (x, y) in pts.items() if not any(a <= x and b <= y and (a, b) != (x, y) for a, b in pts.values())}
    assert {c[0][0] for c in rows if c[col["Pareto front (TTFT p99, cost_per_mtoken)"]][0] == "yes"} == front
    # sorting: ascending, then descending, by the exact values
    for order in (sorted, lambda v: sorted(v, reverse=True)):
        click_header(driver, "#comparison", "USD/Mtoken")
        vals = [float(c[col["USD/Mtoken"]][1]) for c in table_cells(driver, "#comparison")]
        assert vals == order(vals) and len(set(vals)) == 3
    click_header(driver, "#comparison", "serving.replicas")
    assert [c[1][0] for c in table_cells(driver, "#comparison")] == ["2", "3", "4"]
    assert "cost_per_mtoken: " + DEFINITIONS["cost_per_mtoken"] in driver.execute_script(
        "return document.body.innerText"
    )
    assert_offline(page)
    screenshot(driver, tmp_path / "sweep.png")


# ------------------------------------------------------------------------------ a plan


def test_plan_page_in_browser(driver, tmp_path):
    # bursts of 3 requests every 20 s, one request at a time per replica (as in test_plan.py): 2 GPU shapes
    rows = [
        {"arrival_time_s": 20.0 * b, "num_input_tokens": 100, "num_output_tokens": 200}
        for b in range(4)
        for _ in range(3)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "bursts.csv", index=False)
    doc = {
        "name": "html-plan",
        "model": "Llama-3-8B",
        "traffic": {"workload": "bursts.csv"},
        "slo": {"ttft_s": 0.5, "percentile": 100},
        "candidates": {
            "gpu": ["A100-80GB", "H100-SXM"],
            "tp": [1],
            "prefix_cache": ["none"],
            "router": ["round-robin"],
            "max_num_seqs": [1],
            "replicas": {"min": 2, "max": 3},
        },
        "datacenter": {
            "hosts": [{"name": "node", "gpus_per_host": 4, "cpu": {"cores": 16, "mhz": 2000}, "memory_gib": 256}]
        },
        "carbon": {"synthetic": {"mean": 250, "amplitude": 0}},
        "prices": {"currency": "USD", "gpu_hour": {"A100-80GB": 1.79, "H100-SXM": 2.99}},
        "objective": "cost",
    }
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "plan"
    r = kavier("plan", tmp_path / "plan.yaml", "--out", out, "--no-opendc")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "plan.json").read_text())
    page = out / "plan.html"
    assert load(driver, page) == []
    fronts = sorted((out / "plots").glob("front_*.png"))
    assert len(fronts) == 2  # without OpenDC: energy against cost, cost against TTFT
    check_images(driver, len(fronts))
    head = headers(driver, "#comparison")
    assert head[:3] == ["shape", "layout", "status"] and "cost/Mtoken" in head and "front" in head
    col = {h: i for i, h in enumerate(head)}
    cells = table_cells(driver, "#comparison")
    assert len(cells) == len(summary["shapes"]) == 2
    by_shape = {s["shape"]: s for s in summary["shapes"]}
    for row in cells:
        shape = by_shape[row[0][0]]
        for key, name in (("cost_per_mtoken", "cost/Mtoken"), ("ttft_p99_s", "TTFT p99 (s)"), ("gpus", "GPUs")):
            assert row[col[name]][0] == plan_fmt(shape.get(key)), key
        assert row[col["front"]][0] == plan_fmt(shape.get("on_front"))
    text = driver.execute_script("return document.body.innerText")
    assert summary["chosen"]["shape"] in text  # the summary kavier plan prints
    for order in (sorted, lambda v: sorted(v, reverse=True)):
        click_header(driver, "#comparison", "cost/Mtoken")
        vals = [float(c[col["cost/Mtoken"]][1]) for c in table_cells(driver, "#comparison")]
        assert vals == order(vals)
    assert_offline(page)
    screenshot(driver, tmp_path / "plan.png")
