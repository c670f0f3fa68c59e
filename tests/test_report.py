"""The HTML report: written by the demo's comparison, rebuilt from the run's files alone,
opened in headless Chromium, and refused with a one-line error when the files are damaged."""

import base64
import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

pytest.importorskip("matplotlib")

from kdistill import cli  # noqa: E402
from kdistill.config import RunConfig  # noqa: E402
from kdistill.report.plots import FIGURES, LM_FIGURES  # noqa: E402
from kdistill.runs import run_comparison  # noqa: E402

PLOT_IDS = [f"plot-{fid}" for fid, _, _ in FIGURES]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The demo's config (bundled MNIST teacher, MLP student) cut to 300 images and one epoch."""
    raw = yaml.safe_load(resources.files("kdistill.presets").joinpath("mnist_demo.yaml").read_text())
    raw["data"]["limit_train"] = 300
    raw["train"].update(epochs=1, progress=False,
                        output_dir=str(tmp_path_factory.mktemp("demo") / "run"))
    cfg = RunConfig.parse(raw)
    run_comparison(cfg)
    return Path(cfg.train.output_dir)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    """A causal-LM run over two seeds: tiny local Llamas on random words, a few steps each."""
    from lm_helpers import tiny_lm_config

    from kdistill.runs import run_seeds

    tmp = tmp_path_factory.mktemp("lm")
    cfg = RunConfig.parse(tiny_lm_config(tmp, train={"epochs": 1, "max_steps": 4, "progress": False,
                                                     "output_dir": str(tmp / "run")}))
    run_seeds(cfg, 2)
    return Path(cfg.train.output_dir)


def _images(page: str) -> dict[str, bytes]:
    found = re.findall(r'<figure id="(plot-[\w-]+)"><img [^>]*src="data:image/png;base64,([^"]+)"', page)
    return {fid: base64.b64decode(data) for fid, data in found}


def test_demo_run_dir_holds_a_self_contained_report(demo_run):
    page = (demo_run / "report.html").read_text()
    assert '<table id="comparison">' in page and 'id="verdict"' in page
    for role in ("teacher", "scratch", "distilled"):
        assert f"<td>{role}</td>" in page
    images = _images(page)
    assert list(images) == PLOT_IDS
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000 for png in images.values())
    assert "<script" not in page and not re.search(r'(src|href)="(https?:|//)', page)
    saved = json.loads((demo_run / "comparison.json").read_text())
    assert saved["logs"] == {"teacher": None, "scratch": "scratch/metrics.jsonl",
                             "distilled": "distilled/metrics.jsonl"}
    distilled = saved["models"][2]
    assert len(distilled["reliability"]) == 15 and len(distilled["per_class_accuracy"]) == 10
    assert distilled["throughput_batch"] == 1000 and distilled["latency_ms_b1_p95"] >= distilled["latency_ms_b1"]


def test_lm_run_dir_holds_a_report_with_the_lm_table_and_plots(lm_run):
    page = (lm_run / "report.html").read_text()
    assert '<table id="comparison">' in page and "<th>held-out ppl</th>" in page
    assert "held-out perplexity" in page and "mean &#177; std (sample std) over 2 seeds" in page
    images = _images(page)
    assert list(images) == [f"plot-{fid}" for fid, _, _ in LM_FIGURES]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000 for png in images.values())


def _cli(*args) -> int:
    argv, sys.argv = sys.argv, ["kdistill", *map(str, args)]
    try:
        cli.main()
        return 0
    except SystemExit as exc:
        return exc.code
    finally:
        sys.argv = argv


def test_report_command_rebuilds_from_the_run_files(demo_run, tmp_path, capsys):
    copy = shutil.copytree(demo_run, tmp_path / "run")
    (copy / "report.html").unlink()
    for weights in copy.glob("*/model.safetensors"):
        weights.unlink()  # the report needs no model: nothing is re-evaluated or re-trained
    assert _cli("report", copy) == 0
    assert str(copy / "report.html") in capsys.readouterr().out
    assert list(_images((copy / "report.html").read_text())) == PLOT_IDS


def _damage_cases():
    def rewrite(path, fn):
        return lambda run: (run / path).write_text(fn((run / path).read_text()))

    def drop_field(run):
        data = json.loads((run / "comparison.json").read_text())
        del data["models"][1]["ece"]
        (run / "comparison.json").write_text(json.dumps(data))

    return {
        "comparison.json": lambda run: (run / "comparison.json").unlink(),
        "comparison.json is damaged (not valid JSON": rewrite("comparison.json", lambda t: t[: len(t) // 2]),
        "comparison.json is damaged (models.1.ece": drop_field,
        "distilled/metrics.jsonl is missing": lambda run: (run / "distilled" / "metrics.jsonl").unlink(),
        "scratch/metrics.jsonl line 2 is damaged": rewrite("scratch/metrics.jsonl",
                                                           lambda t: t.replace("\n", "\n{oops", 1)),
        "config.yaml is missing": lambda run: (run / "config.yaml").unlink(),
        "config.yaml: student.hidden": rewrite("config.yaml", lambda t: t.replace("- 128", "- many")),
    }


@pytest.mark.parametrize("expected", list(_damage_cases()))
def test_damaged_run_dir_gives_one_line_error_naming_the_file(demo_run, tmp_path, capsys, expected):
    copy = shutil.copytree(demo_run, tmp_path / "run")
    _damage_cases()[expected](copy)
    assert _cli("report", copy) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert "Traceback" not in err


def test_report_of_a_missing_directory(tmp_path, capsys):
    assert _cli("report", tmp_path / "nope") == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------ headless Chromium
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed here (`apt-get install chromium`; "
                             ".ci/run installs it so CI runs this test)")

# Appended to a copy of the page under test only: counts the images the browser decoded.
PROBE = """<script>window.addEventListener("load", () => {
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).map(i => i.alt);
  document.body.setAttribute("data-decoded", ok.join(","));
});</script>"""


def open_in_chromium(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM after load (with the probe's decoded-image list) and the console messages."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return proc.stdout, console


@needs_chromium
def test_chromium_renders_table_and_every_plot_without_errors(demo_run, tmp_path):
    dom, console = open_in_chromium(demo_run / "report.html", tmp_path)
    assert console == []
    assert '<table id="comparison">' in dom and dom.count("<tr>") >= 4
    for pid in PLOT_IDS:
        assert f'id="{pid}"' in dom
    decoded = re.search(r'data-decoded="([^"]*)"', dom).group(1).split(",")
    assert decoded == [fid for fid, _, _ in FIGURES]


@needs_chromium
def test_chromium_renders_an_lm_report_without_errors(lm_run, tmp_path):
    dom, console = open_in_chromium(lm_run / "report.html", tmp_path)
    assert console == []
    assert '<table id="comparison">' in dom and dom.count("<tr>") >= 4
    decoded = re.search(r'data-decoded="([^"]*)"', dom).group(1).split(",")
    assert decoded == [fid for fid, _, _ in LM_FIGURES]


@needs_chromium
def test_chromium_check_catches_page_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img alt="gone" src="data:image/png;base64,AAAA">'
                   '<script>throw new Error("broken page")</script></body></html>')
    dom, console = open_in_chromium(bad, tmp_path)
    assert any("broken page" in line for line in console)
    assert 'data-decoded=""' in dom


def test_distill_alone_ends_with_the_comparison_and_a_report(tmp_path, capsys):
    """`kdistill distill` compares what the run holds (here: the teacher and the distilled
    student, no scratch run) and writes report.html, as `kdistill eval` would."""
    from scale_helpers import write_config, write_teacher

    config = write_config(tmp_path, teacher=write_teacher(tmp_path / "teacher.safetensors"), limit_train=128)
    assert _cli("distill", config) == 0
    out = capsys.readouterr().out
    rows = [line.split()[1] for line in out.splitlines() if line.startswith("│ ")]
    assert rows == ["teacher", "distilled"]  # the comparison table: no scratch run to show
    report = tmp_path / "run" / "report.html"
    assert f"report: {report}" in out and report.is_file()
    assert _cli("distill", config, "--no-evaluate", "--output-dir", tmp_path / "second") == 0
    assert "test split" not in capsys.readouterr().out and not (tmp_path / "second" / "report.html").exists()
