"""The evaluation's plots, drawn from plain data: each writes a PNG whose figure has a title,
its legend outside every axes, and what issue 38 asked for (intervals, interventions, events on
their own rounds, the colour legend, the horizons named)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mfray.evaluate import plots

SPACE = {"stance": ("support", "deny", "query", "comment")}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions save, kept for inspection after they are written."""
    figures: list[Any] = []
    save = plots._save

    def keep(fig: Any, path: str | Path, handles: Any) -> Path:
        figures.append(fig)
        return save(fig, path, handles)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000


def _legend_outside(fig: Any) -> list[str]:
    """The legend's labels, after checking it overlaps no axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the saved figure is closed: draw it again, laid out the same
    canvas.draw()
    renderer = canvas.get_renderer()
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        if ax.get_visible():
            assert not box.overlaps(ax.get_window_extent(renderer)), "legend over an axes"
    return [t.get_text() for t in legend.get_texts()]


def _curves(rounds: int, k: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rounds)
    real, sim = rng.dirichlet(np.ones(k), rounds), rng.dirichlet(np.ones(k), rounds)
    return {"real": real, "sim": sim}


def test_shares_per_event_on_its_own_rounds(drawn: list[Any], tmp_path: Path) -> None:
    lengths = {"short-event": 4, "long-event": 9}
    curves = {(v, "stance", e): _curves(n) for v in ("mf", "mf+deny8") for e, n in
              lengths.items()}
    path = plots.shares(curves, SPACE, 2.0, {"mf+deny8": (("deny8", 3),)},
                        tmp_path / "shares.png")
    _png(path)
    (fig,) = drawn
    assert "shares per round of each event" in fig.get_suptitle()
    labels = _legend_outside(fig)
    assert "warm-up: real actions" in labels and "simulated (dashed)" in labels
    assert any(t.startswith("intervention deny8") and "after round 3" in t for t in labels)
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert len(panels) == 4
    for title, ax in panels.items():
        variant, event = title.split(" · ")
        # each event on its own rounds, not pooled by round with the longer event
        assert max(max(line.get_xdata()) for line in ax.get_lines()
                   if len(line.get_xdata()) > 2) == lengths[event] - 1
        marks = [line for line in ax.get_lines() if line.get_linestyle() == "-."]
        assert len(marks) == (1 if variant == "mf+deny8" else 0)
        if marks:
            assert marks[0].get_xdata()[0] == 3.5  # acts after round 3
        # the warm-up band covers rounds 0 and 1
        (band,) = ax.patches
        assert band.get_x() == -0.5 and band.get_width() == pytest.approx(2.0)


def test_shares_shows_at_most_max_events(drawn: list[Any], tmp_path: Path) -> None:
    curves = {("mf", "stance", f"e{i:02d}"): _curves(5) for i in range(plots.MAX_EVENTS + 3)}
    plots.shares(curves, SPACE, 1.0, {}, tmp_path / "shares.png")
    (fig,) = drawn
    assert len(fig.axes) == plots.MAX_EVENTS and "3 more events" in fig.get_suptitle()
    assert not any("intervention" in t for t in _legend_outside(fig))


def test_kl_by_event_has_intervals_floor_and_title(drawn: list[Any], tmp_path: Path) -> None:
    bars = {"stance": {"mf": {"a": (0.2, 0.1, 0.3), "b": (0.4, 0.35, 0.5)},
                       "state": {"a": (0.5, 0.4, 0.6), "b": (0.6, 0.6, 0.6)}}}
    overall = {"stance": {"mf": (0.3, 0.2, 0.4), "state": (0.55, 0.5, 0.6)}}
    floors = {"stance": {"a": 0.02, "b": 0.04}}
    _png(plots.kl_by_event(bars, overall, floors, "whiskers: seeds", tmp_path / "k.png"))
    (fig,) = drawn
    assert "per held-out event, lower is better" in fig.get_suptitle()
    labels = _legend_outside(fig)
    assert labels[:2] == ["mf", "state"] and any("sampling floor" in t for t in labels)
    (ax,) = fig.axes
    from matplotlib.container import ErrorbarContainer

    bars_err = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars_err) == 2  # one per variant, over the events and the mean of events
    segments = bars_err[0].lines[2][0].get_segments()
    assert [tuple(np.round(s[:, 1], 6)) for s in segments] == [(0.1, 0.3), (0.35, 0.5),
                                                              (0.2, 0.4)]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "mean of events"]
    assert ax.get_ylabel() == "KL, stance (nats)"


def test_comparison_colour_legend(drawn: list[Any], tmp_path: Path) -> None:
    panels = {"stance": [("state", "other LLM", 0.5, 0.4, 0.6), ("mf", "mean field", 0.3,
                                                                   0.2, 0.4),
                         ("base-rate", "no LLM", 0.2, 0.15, 0.25)]}
    _png(plots.comparison(panels, {"stance": (0.02, 0.01, 0.03)}, "whiskers: events",
                          tmp_path / "c.png"))
    (fig,) = drawn
    assert "per variant, lower is better" in fig.get_suptitle()
    labels = _legend_outside(fig)
    assert labels == ["mean field", "other LLM", "no LLM (hatched)", "sampling floor",
                      "its interval"]
    hatches = [p.get_hatch() for p in fig.axes[0].patches if p.get_height() > 0.1]
    assert hatches == [None, None, "//"]


def test_forecast_names_its_horizons(drawn: list[Any], tmp_path: Path) -> None:
    rounds = np.arange(2, 11)
    horizons = {"short": rounds[:3], "mid": rounds[3:6], "long": rounds[6:]}
    real = {"stance": _curves(9)["real"]}
    sim = {(v, "stance"): _curves(9)["sim"] for v in ("mf", "state")}
    _png(plots.forecast(rounds, horizons, real, sim, SPACE, ["mf", "state"],
                        tmp_path / "f.png"))
    (fig,) = drawn
    assert "Forecast after the warm-up" in fig.get_suptitle()
    assert any(t.startswith("horizon boundary") for t in _legend_outside(fig))
    for ax in fig.axes:
        assert [t.get_text() for t in ax.texts] == ["short", "mid", "long"]
        assert sorted(line.get_xdata()[0] for line in ax.get_lines()
                      if line.get_linestyle() == ":") == [4.5, 7.5]


def test_sweep_and_plan(drawn: list[Any], tmp_path: Path) -> None:
    rows = [{"variant": v, "k": k, "kl": 0.1 * k + (v == "mf")} for v in ("mf", "state")
            for k in (1, 2)]
    _png(plots.sweep(rows, ["k"], tmp_path / "s.png"))
    effects = [{"intervention": "x", "variant": "mf", "effect": 0.1, "low": 0.05,
                "high": 0.2}]
    _png(plots.plan(effects, ("stance", "deny"), tmp_path / "p.png"))
    sweep_fig, plan_fig = drawn
    assert "Sweep" in sweep_fig.get_suptitle() and _legend_outside(sweep_fig) == ["mf", "state"]
    assert "stance=deny" in plan_fig.axes[0].get_title()
