"""The run report on a synthetic run: its order and content, and its HTML page in a real browser."""

import json
import shutil
import subprocess

import pytest
from synthetic_runs import write_run

from mimicnorm_deploy.cli import main
from mimicnorm_deploy.layout import TENSORRT_VARIANT, VARIANTS
from mimicnorm_deploy.report_html import SECTION_IDS

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium; scripts/test.sh does)"
)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    run = write_run(tmp_path_factory.mktemp("run"), variants=VARIANTS,
                    with_model_files=True)  # fmt: skip
    out = run / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    return out


def test_report_leads_with_the_twins_then_precisions_then_engines(report_dir):
    markdown = (report_dir / "report.md").read_text()
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[:5] == ["## MimicNorm vs BN-folded at each precision", "## Per-tensor INT8: what folding BN costs",
                            "## Each precision against FP32", "## Engines in detail (this machine)",
                            "## Artifacts for TensorRT targets"]  # fmt: skip
    report = json.loads((report_dir / "report.json").read_text())
    twins = report["comparisons"]["twins"]
    assert len(twins) == 6  # 3 variants x 2 batch sizes
    # The synthetic twins share one latency distribution: the report must not call them different.
    assert all(t["latency_ratio"]["verdict"] == "no detectable difference" for t in twins)
    precisions = report["comparisons"]["precisions"]
    assert all(p["latency_ratio"]["verdict"] == "faster" for p in precisions)  # INT8 at 0.6x FP32
    assert "no detectable difference" in markdown and "[" in markdown  # ratios with their intervals


def test_tensorrt_artifacts_are_covered_with_accuracy_and_no_latency(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    files = {a["file"].rsplit("/", 1)[-1] for a in report["tensorrt_artifacts"]}
    assert files == {f"model.{TENSORRT_VARIANT}.onnx", f"model.{TENSORRT_VARIANT}.trt10.calib", "model.fp16.onnx"}
    qdq = next(a for a in report["tensorrt_artifacts"] if a["file"].endswith(f"{TENSORRT_VARIANT}.onnx"))
    assert qdq["simulated_accuracy"] == pytest.approx(0.895)
    markdown = (report_dir / "report.md").read_text()
    assert markdown.count("not measured here") >= 6  # every TensorRT artifact of both models


def test_html_is_one_file_with_every_section(report_dir):
    page = (report_dir / "report.html").read_text()
    for section_id in SECTION_IDS:
        assert f'<section id="{section_id}">' in page
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert page.count("<polyline") >= 6  # ECDFs, batch sweep, per-layer SQNR
    assert "conv0" in page and "fp16" in page  # the precision plan


def run_chromium(page, tmp_path):
    """Load `page` headless; return (DOM after load, console messages)."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
               "--enable-logging=stderr", "--log-level=0", "--dump-dom", page.as_uri()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


@needs_chromium
@pytest.mark.slow
def test_html_report_loads_in_chromium_without_console_messages(report_dir, tmp_path):
    dom, console = run_chromium(report_dir / "report.html", tmp_path)
    assert console == []
    for section_id in SECTION_IDS:
        assert f'<section id="{section_id}">' in dom
    assert "MimicNorm vs BN-folded at each precision" in dom and "<svg" in dom


@needs_chromium
@pytest.mark.slow
def test_the_console_check_sees_an_error(tmp_path):
    # The check above is only worth something if this browser reports console errors to it.
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><script>console.error("broken-page-marker")</script></body></html>')
    _, console = run_chromium(page, tmp_path)
    assert any("broken-page-marker" in line for line in console)


@needs_chromium
@pytest.mark.slow
def test_compare_html_loads_in_chromium_without_console_messages(tmp_path):
    a = write_run(tmp_path / "a", session="a")
    b = write_run(tmp_path / "b", scale_bn=1.2, seed=3, session="b")
    page = tmp_path / "compare.html"
    assert main(["compare", str(a), str(b), "--html", str(page)]) == 0
    dom, console = run_chromium(page, tmp_path)
    assert console == []
    assert '<section id="environment">' in dom and f"{b} vs {a}" in dom and "<svg" in dom
