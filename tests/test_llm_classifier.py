"""The prompt classifier (mfray/llm/classifier.py): fitting, scoring, saving, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mfray.llm import ModelError
from mfray.llm.classifier import (
    C_GRID,
    CLASSIFIER_FILE,
    ClassifierModel,
    classifier_path,
    fit_option_model,
    load_classifier,
)

OPTIONS = ("support", "deny", "query", "comment")


def _examples(n: int = 240, seed: int = 0) -> tuple[list[str], list[int], list[str]]:
    """Prompts whose cue word tells the label 80 % of the time, over 4 events."""
    rng = np.random.default_rng(seed)
    cues = ("agree", "false", "really", "wow")
    prompts, labels, groups = [], [], []
    for i in range(n):
        y = int(rng.integers(4))
        cue = cues[y] if rng.random() < 0.8 else cues[int(rng.integers(4))]
        prompts.append(f"Topic: a story.\nThe user replies to: {cue} indeed\nOptions: "
                       + ", ".join(OPTIONS))
        labels.append(y)
        groups.append(f"event-{i % 4}")
    return prompts, labels, groups


def test_fit_reads_the_cue_and_its_rows_are_distributions() -> None:
    prompts, labels, groups = _examples()
    model = fit_option_model(prompts, labels, OPTIONS, groups)
    test = [f"Topic: a story.\nThe user replies to: {c} indeed" for c in
            ("agree", "false", "really", "wow")]
    logp = model.log_probs(test)
    assert logp.shape == (4, 4)
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-9)
    assert (logp.argmax(axis=1) == np.arange(4)).all()
    assert (np.exp(logp.max(axis=1)) > 0.5).all()  # the cue is right 85 % of the time
    assert model.c in C_GRID and model.c >= 0.01  # the cue carries over to unseen events


def test_unseen_words_give_the_label_frequencies() -> None:
    prompts = [f"word{i % 3}" for i in range(90)]
    labels = [0] * 60 + [3] * 30  # independent of the words (each word: 2:1)
    model = fit_option_model(prompts, labels, OPTIONS, [f"e{i % 3}" for i in range(90)])
    p = np.exp(model.log_probs(["nothing known here"]))[0]
    assert p[0] == pytest.approx(2 / 3, abs=0.05) and p[3] == pytest.approx(1 / 3, abs=0.05)
    assert p[1] < 1e-6 and p[2] < 1e-6  # options never seen in training get no mass


def test_one_class_or_one_event() -> None:
    one = fit_option_model(["a b", "a c", "b c"], [2, 2, 2], OPTIONS, ["e", "e", "e"])
    assert np.exp(one.log_probs(["a"]))[0].argmax() == 2
    two = fit_option_model(["yes"] * 5 + ["no"] * 5, [0] * 5 + [1] * 5, OPTIONS, ["e"] * 10)
    p = np.exp(two.log_probs(["yes", "no"]))
    assert p[0, 0] > 0.6 and p[1, 1] > 0.6  # two classes: scikit-learn keeps one row of weights
    assert p[:, 2:].max() < 1e-6
    with pytest.raises(ValueError, match="index the 4 options"):
        fit_option_model(["a"], [4], OPTIONS, ["e"])


def test_save_load_score_and_refusals(tmp_path: Path) -> None:
    prompts, labels, groups = _examples(80)
    model = ClassifierModel([fit_option_model(prompts, labels, OPTIONS, groups)])
    path = model.save(tmp_path / CLASSIFIER_FILE)
    back = load_classifier(path)
    np.testing.assert_allclose(back.score(prompts[:5], OPTIONS), model.score(prompts[:5], OPTIONS))
    assert classifier_path(str(tmp_path)) == path == classifier_path(str(path))
    assert classifier_path(str(tmp_path / "elsewhere")) is None and classifier_path(None) is None
    with pytest.raises(ModelError, match="fitted on the options"):
        back.score(prompts[:1], ("yes", "no"))
    with pytest.raises(ModelError, match="writes no text"):
        back.generate(prompts[:1])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CLASSIFIER_FILE).write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(ModelError, match="cannot read the classifier"):
        load_classifier(tmp_path / "bad" / CLASSIFIER_FILE)


def test_the_driver_refuses_text_mode_or_an_adapter(tmp_path: Path) -> None:
    from mfray.config import PolicyConfig
    from mfray.llm.build import build_model, check_model

    prompts, labels, groups = _examples(40)
    ClassifierModel([fit_option_model(prompts, labels, OPTIONS, groups)]).save(
        tmp_path / CLASSIFIER_FILE)
    check_model(PolicyConfig(model=str(tmp_path)))
    assert isinstance(build_model(PolicyConfig(model=str(tmp_path))), ClassifierModel)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    for bad in (PolicyConfig(model=str(tmp_path), mode="text"),
                PolicyConfig(model=str(tmp_path), adapter=str(tmp_path / "adapter"))):
        with pytest.raises(ModelError, match="takes policy.mode=choice and no adapter"):
            check_model(bad)
