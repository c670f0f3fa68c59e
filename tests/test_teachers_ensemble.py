"""EnsembleTeacher: live and cached members, both combinations, temperature, refusals."""

import math

import pytest
import torch

from kdistill.data.core import Split
from kdistill.errors import ConfigError
from kdistill.losses import soft_target_kl
from kdistill.models.builders import MLP
from kdistill.teachers import CachedTeacher, LiveTeacher, write_cache
from kdistill.teachers.ensemble import EnsembleTeacher


def _members(classes=(4, 4, 4)):
    out = []
    for seed, c in enumerate(classes):
        torch.manual_seed(seed)
        model = MLP(6, [5], c)
        with torch.no_grad():
            model.net[-1].weight.mul_(3.0)  # peaked enough that tempering matters
        out.append(LiveTeacher(model, num_outputs=c))
    return out


def _batch(n=5):
    return {"inputs": torch.randn(n, 6, generator=torch.Generator().manual_seed(9)),
            "index": torch.arange(n)}


def _softmax(row, temperature=1.0):
    e = [math.exp(float(v) / temperature) for v in row]
    return [v / sum(e) for v in e]


def test_mean_probs_is_the_log_of_the_weighted_mean_probability():
    members, batch = _members(), _batch()
    ensemble = EnsembleTeacher(members, weights=[1, 2, 1])
    logits = ensemble.logits(batch)
    member_logits = [m.logits(batch) for m in members]
    for i in range(5):
        mixture = [sum(w * _softmax(z[i])[c] for w, z in zip([0.25, 0.5, 0.25], member_logits)) for c in range(4)]
        torch.testing.assert_close(logits[i], torch.tensor([math.log(p) for p in mixture]))
    assert ensemble.num_outputs == 4
    assert ensemble.describe()["weights"] == [0.25, 0.5, 0.25]
    assert [m["kind"] for m in ensemble.describe()["members"]] == ["live"] * 3


def test_the_ensemble_temperature_gives_the_mixture_of_tempered_members():
    members, batch, t = _members(), _batch(), 4.0
    member_logits = [m.logits(batch) for m in members]
    tempered_mixture = sum(torch.softmax(z / t, -1) for z in member_logits) / 3
    aware = EnsembleTeacher(members, temperature=t).logits(batch)
    torch.testing.assert_close(torch.softmax(aware / t, -1), tempered_mixture)
    # the T=1 ensemble seen at T=4 is the re-tempered mixture, which differs (the documented caveat)
    plain = EnsembleTeacher(members).logits(batch)
    assert not torch.allclose(torch.softmax(plain / t, -1), tempered_mixture, atol=1e-3)
    student = torch.zeros(5, 4)
    assert float(soft_target_kl(student, aware, t)) != pytest.approx(float(soft_target_kl(student, plain, t)))


def test_mean_logits_and_a_single_member():
    members, batch = _members(), _batch()
    member_logits = [m.logits(batch) for m in members]
    torch.testing.assert_close(EnsembleTeacher(members, weights=[3, 1, 1], combine="mean_logits").logits(batch),
                               0.6 * member_logits[0] + 0.2 * member_logits[1] + 0.2 * member_logits[2])
    one = EnsembleTeacher(members[:1]).logits(batch)
    torch.testing.assert_close(torch.softmax(one, -1), torch.softmax(member_logits[0], -1))


def test_cached_and_live_members_combine(tmp_path):
    members, batch = _members(), _batch()
    split = Split(inputs=batch["inputs"], labels=torch.zeros(5, dtype=torch.long))
    write_cache(members[1], split, tmp_path / "cache")
    cached = CachedTeacher(tmp_path / "cache")
    mixed = EnsembleTeacher([members[0], cached, members[2]]).logits(batch)
    torch.testing.assert_close(mixed, EnsembleTeacher(members).logits(batch))


def test_refusals_are_one_line():
    with pytest.raises(ConfigError, match=r"different numbers of classes \[4, 3, 4\]"):
        EnsembleTeacher(_members((4, 3, 4)))
    with pytest.raises(ConfigError, match="2 weights for 3 teachers"):
        EnsembleTeacher(_members(), weights=[1, 1])
    with pytest.raises(ConfigError, match="positive"):
        EnsembleTeacher(_members(), weights=[1, 0, 1])
    with pytest.raises(ConfigError, match="combine"):
        EnsembleTeacher(_members(), combine="median")
    with pytest.raises(ConfigError, match="at least one"):
        EnsembleTeacher([])


def test_topk_cache_members_are_refused(tmp_path):
    members, batch = _members(), _batch()
    split = Split(inputs=batch["inputs"], labels=torch.zeros(5, dtype=torch.long))
    write_cache(members[0], split, tmp_path / "topk", format="topk", k=2)
    with pytest.raises(ConfigError, match="top-k caches"):
        EnsembleTeacher([CachedTeacher(tmp_path / "topk"), members[1]])
