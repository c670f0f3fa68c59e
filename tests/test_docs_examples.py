"""The scripts the documentation shows (examples/) run as they are, with tiny models; and the
generated config reference covers every field of every task's config."""

import importlib.util
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_own_loop_example_distils_and_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = runpy.run_path(str(ROOT / "examples" / "own_loop.py"), run_name="__main__")
    kd, out = done["kd"], done["out"]
    assert kd.step == done["epochs"] * len(done["loader"])  # one schedule step per call
    assert out.hparams["temperature"] == pytest.approx(2.0)  # the cosine schedule reached its end
    assert (tmp_path / "student.safetensors").is_file()


def test_hf_trainer_example_logs_the_terms(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("datasets")
    monkeypatch.chdir(tmp_path)
    done = runpy.run_path(str(ROOT / "examples" / "hf_trainer.py"), run_name="__main__")
    state = done["trainer"].state
    assert state.global_step == 4
    logged = [entry for entry in state.log_history if "soft" in entry]
    assert len(logged) == 2 and all(entry["loss"] == pytest.approx(entry["soft"]) for entry in logged)


def _hook():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "docs" / "hooks" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(text: str, heading_anchor: str) -> str:
    """The part of the page under the heading with this anchor, up to the next heading."""
    start = text.index(f"{{#{heading_anchor}}}")
    end = text.find("\n#", start)
    return text[start:] if end < 0 else text[start:end]


def test_config_reference_lists_every_field_of_every_section():
    from kdistill.config import TASKS

    hook = _hook()
    text = hook.config_reference()
    models = [*TASKS.values(), *hook.section_models()]
    names = {m.__name__ for m in models}
    assert {"LMLoss", "LMDataConfig", "TrainConfig", "HFCausalLMSpec", "CacheTeacherConfig"} <= names
    for model in models:
        block = _block(text, model.__name__.lower())
        for name in model.model_fields:
            assert f"| `{name}` |" in block, f"{model.__name__}.{name} is missing from the config reference"
    assert "| `max_steps` | integer or null, &gt; 0 | `null` |" in _block(text, "trainconfig")
