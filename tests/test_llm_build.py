"""The backend factory (mfray/llm/build.py): the driver's checks and the model it builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfray.config import PolicyConfig, ResourcesConfig
from mfray.llm import ModelError, ScriptedModel, load
from mfray.llm.build import SCRIPTED, build_model, check_model


def test_scripted_models_need_no_weights() -> None:
    assert "scripted" in SCRIPTED
    check_model(PolicyConfig(model="scripted"))
    assert isinstance(build_model(PolicyConfig(model="scripted")), ScriptedModel)
    with pytest.raises(ModelError, match="no model at"):
        check_model(PolicyConfig(model="/nowhere/model"))


def test_forced_bf16_on_an_emulating_cpu_is_said_on_the_drivers_console(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``simulate`` calls check_model in the driver before Ray starts: the advice reaches the
    user's console, not only an inference actor's log."""
    monkeypatch.setattr(load, "cpu_bf16_native", lambda: False)
    check_model(PolicyConfig(model=str(tiny_model_dir), bf16="on"), ResourcesConfig(device="cpu"))
    err = capsys.readouterr().err
    assert "policy.bf16 is on" in err and "--set policy.bf16=auto" in err
    for quiet, where in ((PolicyConfig(model=str(tiny_model_dir)), ResourcesConfig(device="cpu")),
                         (PolicyConfig(model=str(tiny_model_dir), bf16="on"),
                          ResourcesConfig(device="cuda")),
                         (PolicyConfig(model="scripted", bf16="on"), None)):
        check_model(quiet, where)
    monkeypatch.setattr(load, "cpu_bf16_native", lambda: True)
    check_model(PolicyConfig(model=str(tiny_model_dir), bf16="on"), ResourcesConfig(device="cpu"))
    assert capsys.readouterr().err == ""
