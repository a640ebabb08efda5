from __future__ import annotations

import pytest

from mfray.errors import ConfigError
from mfray.prompts import fields, render, render_parts, template_hash

SHARED = {"topic": "A dam burst", "population": ""}
AGENT = {"context": "BREAKING: dam burst", "persona": "location: Leeds", "dimension": "stance",
         "options": "support, deny, query, comment"}


def test_shared_part_comes_first_and_is_agent_independent() -> None:
    shared_fields, agent_fields = fields("policy")
    assert shared_fields == {"topic", "population"}
    assert agent_fields == {"context", "persona", "dimension", "options"}
    a = render("policy", SHARED, AGENT)
    b = render("policy", SHARED, AGENT | {"persona": "location: unknown", "context": "other"})
    prefix = render_parts("policy", SHARED, AGENT)[0]
    assert a.startswith(prefix) and b.startswith(prefix)
    assert "A dam burst" in prefix and "Leeds" not in prefix


def test_render_is_strict() -> None:
    with pytest.raises(ConfigError, match="missing \\['population'\\]"):
        render("policy", {"topic": "t"}, AGENT)
    with pytest.raises(ConfigError, match="unexpected \\['extra'\\]"):
        render("policy", SHARED, AGENT | {"extra": "x"})
    with pytest.raises(ConfigError, match="no prompt template"):
        render("nope", {}, {})


def test_template_hash_is_stable_and_short() -> None:
    assert template_hash("policy") == template_hash("policy")
    assert len(template_hash("policy")) == 16


def test_no_marker_left_in_output() -> None:
    assert "<<<AGENT>>>" not in render("policy", SHARED, AGENT)
