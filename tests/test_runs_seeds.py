"""`--seeds N`: the comparison over seeds seed..seed+N-1 in OUT/seed_K/, summarised as mean ± std."""

import json
import statistics
import sys

import pytest
import torch
import yaml
from safetensors.torch import save_file

from kdistill import cli


def _blobs(path, n_train=240, n_test=120, classes=3, dim=8):
    g = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(classes, dim, generator=g)

    def draw(n):
        labels = torch.randint(0, classes, (n,), generator=g)
        return centres[labels] + torch.randn(n, dim, generator=g), labels

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    save_file({"train_inputs": xtr, "train_labels": ytr, "test_inputs": xte, "test_labels": yte}, str(path))


def test_compare_over_seeds_reports_mean_and_std(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    _blobs(tmp_path / "blobs.safetensors")
    out = tmp_path / "out"
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({
        "name": "blobs", "seed": 3,
        "data": {"dataset": "tensors", "path": str(tmp_path / "blobs.safetensors"), "batch_size": 40,
                 "eval_batch_size": 60},
        "teacher": {"kind": "live", "model": {"arch": "mlp", "hidden": [32]}},
        "student": {"arch": "mlp", "hidden": [4]},
        "optim": {"lr": 0.05},
        "train": {"epochs": 2, "output_dir": str(out), "progress": False}}))
    argv, sys.argv = sys.argv, ["kdistill", "compare", str(tmp_path / "cfg.yaml"), "--seeds", "2"]
    try:
        cli.main()
    finally:
        sys.argv = argv
    printed = capsys.readouterr().out
    assert "mean ± std over 2 seeds" in printed and "±" in printed

    summary = json.loads((out / "comparison.json").read_text())
    assert summary["seeds"] == [3, 4] and summary["runs"] == ["seed_3", "seed_4"]
    per_seed = [json.loads((out / run / "comparison.json").read_text()) for run in summary["runs"]]
    assert [s["seed"] for s in per_seed] == [3, 4]
    for i, row in enumerate(summary["models"]):
        values = [s["models"][i]["accuracy"] for s in per_seed]
        assert row["name"] == per_seed[0]["models"][i]["name"]
        assert row["accuracy"]["values"] == values
        assert row["accuracy"]["mean"] == pytest.approx(statistics.fmean(values))
        assert row["accuracy"]["std"] == pytest.approx(statistics.stdev(values))
    for run in ("", "seed_3/", "seed_4/"):
        assert (out / f"{run}report.html").is_file()
    page = (out / "report.html").read_text()
    assert "over 2 seeds [3, 4]" in page and page.count('<figure id="plot-') == 6

    # the multi-seed report is rebuilt from the seed folders, and names a damaged one
    argv, sys.argv = sys.argv, ["kdistill", "report", str(out)]
    try:
        (out / "seed_4" / "comparison.json").unlink()
        with pytest.raises(SystemExit) as stop:
            cli.main()
        assert stop.value.code == 2
        assert "seed_4/comparison.json is missing" in capsys.readouterr().err
        summary["runs"] = ["../elsewhere"]
        (out / "comparison.json").write_text(json.dumps(summary))
        with pytest.raises(SystemExit):
            cli.main()
        assert "'runs' must list the seed folders" in capsys.readouterr().err
    finally:
        sys.argv = argv
