"""The divergence guard's rules on synthetic loss curves and validation summaries, and the
NaN diagnosis that names the samples at fault."""

import pytest
import torch

from kdistill.errors import TrainingError
from kdistill.guard import DivergenceGuard, DivergenceGuardConfig, majority_share, nonfinite_culprits


def _feed(guard, losses):
    for step, loss in enumerate(losses):
        guard.observe_step(step, 0, loss)


def test_loss_far_above_its_start_stops():
    guard = DivergenceGuard(DivergenceGuardConfig(window=3, loss_factor=10))
    _feed(guard, [2.0, 2.5, 3.0, 15.0, 30.0])  # start min 2.0; mean of last 3 = 16 < 20
    with pytest.raises(TrainingError, match="loss_factor is 10"):
        guard.observe_step(5, 0, 40.0)  # mean 28.3 > 20


def test_decreasing_noisy_loss_and_switched_off_guard_pass():
    _feed(DivergenceGuard(DivergenceGuardConfig(window=3)), [2.0, 1.0, 5.0, 0.5, 8.0, 9.0, 2.0])
    _feed(DivergenceGuard(DivergenceGuardConfig(window=2, enabled=False)), [1.0, 1.0, 1e9, 1e9])


def test_baseline_survives_resume():
    cfg = DivergenceGuardConfig(window=2, loss_factor=10)
    first = DivergenceGuard(cfg)
    _feed(first, [1.0, 1.0])
    resumed = DivergenceGuard(cfg)
    resumed.load_state(first.state())
    resumed.observe_step(2, 0, 15.0)
    with pytest.raises(TrainingError):
        resumed.observe_step(3, 0, 15.0)  # vs the start (1.0), not the resumed run's first losses


def test_chance_rule():
    labels = torch.tensor([0] * 60 + [1] * 40)
    assert majority_share(labels) == 0.6 and majority_share(labels, min_samples=101) is None
    guard = DivergenceGuard(DivergenceGuardConfig(chance_min_steps=10), labels)
    assert "at chance" in guard.verdict(1, {"val_accuracy": 0.61, "step": 10})
    assert guard.verdict(1, {"val_accuracy": 0.63, "step": 10}) is None
    assert guard.verdict(1, {"val_accuracy": 0.5, "step": 9}) is None  # too few steps yet
    off = DivergenceGuard(DivergenceGuardConfig(chance_after_epochs=None), labels)
    assert off.verdict(5, {"val_accuracy": 0.0, "step": 1000}) is None


def test_nonfinite_culprits_tell_input_teacher_and_student_apart():
    x = torch.zeros(4, 3)
    finite = torch.zeros(4, 2)
    bad = finite.clone()
    bad[2, 1] = float("nan")
    x_bad = x.clone()
    x_bad[3, 0] = float("inf")
    assert nonfinite_culprits({"inputs": x_bad, "labels": torch.zeros(4)}, bad, finite) == ("input 'inputs'", [3])
    assert nonfinite_culprits({"inputs": x}, finite, bad) == ("teacher", [2])
    assert nonfinite_culprits({"inputs": x}, bad, finite) == ("student", [2])
    masked = finite.clone()
    masked[0, 0] = float("-inf")  # a teacher may mask logits with -inf
    assert nonfinite_culprits({"inputs": x}, finite, masked) == ("loss", [])


def test_a_term_ramped_in_by_its_schedule_is_not_divergence_but_a_blow_up_is():
    """DKD's warm-up takes its term's weight from 0 to 1: the loss rises ~10x by design while every
    unweighted term falls, so the start is taken under this step's weights; a student whose terms
    grow still stops the run."""
    def run(grow: float):
        guard = DivergenceGuard(DivergenceGuardConfig(window=3, loss_factor=10))
        for step in range(30):
            ramp = min(step / 10, 1.0)
            hard, dkd = (2.3 - 0.01 * step) * grow ** step, 3.0 - 0.02 * step
            guard.observe_step(step, 0, hard + ramp * 8 * dkd, {"loss": 0.0, "hard": hard, "dkd": dkd,
                                                                "teacher_entropy": 0.01 * step ** 3},
                               {"lr": 0.1, "hard_weight": 1.0, "dkd_weight": ramp})
    run(1.0)
    with pytest.raises(TrainingError, match="its start under this step's loss weights"):
        run(1.5)


def test_a_term_without_a_scheduled_weight_keeps_the_plain_start():
    guard = DivergenceGuard(DivergenceGuardConfig(window=2, loss_factor=10))
    _feed(guard, [1.0, 1.0])
    guard.observe_step(2, 0, 15.0, {"hard": 1.0, "dist": 14.0}, {"hard_weight": 1.0})
    with pytest.raises(TrainingError, match=r"its start \(1"):
        guard.observe_step(3, 0, 15.0, {"hard": 1.0, "dist": 14.0}, {"hard_weight": 1.0})
