"""The Hinton MNIST benchmark's ready configs, and (slow) its --quick run end to end."""

import json
import sys
from pathlib import Path

import pytest

from kdistill.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent


def _cfg(role: str) -> RunConfig:
    return RunConfig.from_yaml(ROOT / "configs" / f"hinton_{role}.yaml")


def test_hinton_configs_follow_the_paper():
    teacher, scratch, distilled = _cfg("teacher"), _cfg("scratch"), _cfg("distilled")
    assert teacher.teacher.model.hidden == [1200, 1200] and teacher.teacher.model.dropout > 0
    assert teacher.data.augment in ("jitter", "affine") and teacher.data.train_on_val
    assert teacher.optim.max_norm is not None and teacher.data.jitter_pixels == 2
    # the baseline is unregularised; the distilled student is the same network at T=20
    assert scratch.student == distilled.student and scratch.student.hidden == [800, 800]
    assert scratch.student.dropout == 0 and scratch.data.augment == "none"
    assert scratch.optim.weight_decay == 0
    assert distilled.loss.temperature == 20 and distilled.teacher.model == teacher.teacher.model
    assert scratch.optim == distilled.optim and scratch.train.epochs == distilled.train.epochs


def test_control_is_the_scratch_student_under_the_distilled_transforms():
    sys.path.insert(0, str(ROOT / "bench"))
    import hinton_mnist

    cfgs = hinton_mnist.load_configs(quick=False)
    control, scratch, distilled = cfgs["augmented"], cfgs["scratch"], cfgs["distilled"]
    assert control.data == distilled.data and control.data.augment != "none"
    assert control.student == scratch.student and control.optim == scratch.optim
    assert control.teacher is None and control.train.epochs == distilled.train.epochs


@pytest.mark.slow
def test_quick_benchmark_writes_every_figure(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import hinton_mnist

    out = tmp_path / "result.json"
    assert hinton_mnist.main(["--quick", "--threads", "1", "--seeds", "0,1",
                              "--out", str(tmp_path / "runs"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("teacher_errors", "scratch_errors", "augmented_errors", "distilled_errors"):
        assert set(result[key]) == {"mean", "std", "per_seed"}
    assert result["errors_saved_over_augmented"] == pytest.approx(
        result["augmented_errors"]["mean"] - result["distilled_errors"]["mean"])
    assert len(result["distilled_errors"]["per_seed"]) == 2 and "gap_closed" in result
