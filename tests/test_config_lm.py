"""The causal-LM additions to the config: additive, validated, one clear line per problem."""

import pytest

from kdistill.config import DataConfig, LMDataConfig, RunConfig
from kdistill.errors import ConfigError

LM = {"task": "causal_lm", "data": {"dataset": "shakespeare"},
      "student": {"arch": "hf_causal_lm", "config": {"model_type": "llama"}},
      "teacher": {"kind": "live", "model": {"arch": "hf_causal_lm", "source": "smollm2-135m-instruct"}}}


def test_classification_defaults_unchanged_and_lm_parses():
    assert isinstance(RunConfig().data, DataConfig) and RunConfig().task == "classification"
    cfg = RunConfig.parse(LM)
    assert isinstance(cfg.data, LMDataConfig) and cfg.loss.divergence == "forward_kl"
    assert RunConfig.parse(cfg.model_dump(mode="json")) == cfg  # YAML round trip


@pytest.mark.parametrize("change, message", [
    ({"data": {"dataset": "mnist"}}, "data.dataset .mnist. is a classification dataset: set task: classification"),
    ({"data": {"dataset": "shakespeare", "seq_len": 1}}, "data.seq_len"),
    ({"data": {"dataset": "completions_jsonl"}}, "data.path must name"),
    ({"student": {"arch": "mlp"}}, "hf_causal_lm"),
    ({"loss": {"divergence": "hellinger"}}, "loss.divergence"),
    ({"loss": {"jsd_beta": 1.5}}, "loss.jsd_beta"),
    ({"student": {"arch": "hf_causal_lm", "source": "a", "config": {"model_type": "llama"}}}, "exactly one"),
])
def test_bad_lm_configs_name_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.parse({**LM, **change})
