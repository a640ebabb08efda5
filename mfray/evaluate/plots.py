"""Every plot of the evaluation: pure functions, plain data in, one PNG out.

:mod:`mfray.evaluate.report`, :mod:`mfray.evaluate.compare`, :mod:`mfray.sweep` and
:mod:`mfray.plan` compute the tables; these functions only draw them, with matplotlib's Agg
backend (no display needed). Each figure has a title that says what is shown, axis labels with
units, and its legend outside the axes, so that no legend covers data. KL is in nats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: (mean, low, high) of one bar
Interval = tuple[float, float, float]
#: bar colour and hatch of each kind of variant in ``comparison.png``
KIND_STYLE = {"mean field": ("tab:blue", None), "other LLM": ("tab:orange", None),
              "no LLM": ("0.6", "//")}
#: at most this many events get a column in ``shares.png``; its title counts the others
MAX_EVENTS = 8
WARMUP_COLOUR = "0.88"
#: black dash-dot: no option colour, neither the real (solid) nor the simulated (dashed) style
INTERVENTION_STYLE = {"color": "black", "ls": "-.", "lw": 1.3}


def shares(curves: Mapping[tuple[str, str, Any], Mapping[str, np.ndarray]],
           label_space: Mapping[str, Sequence[str]], warmup_rounds: float,
           interventions: Mapping[str, Sequence[tuple[str, int]]], path: str | Path) -> Path:
    """Real (solid) vs simulated (dashed) shares per round: one panel per variant (rows) and
    event (columns), for every dimension.

    ``curves[(variant, dim, event)]`` holds ``real`` and ``sim``, each ``rounds × options``
    over the event's own rounds; ``interventions[variant]`` lists ``(name, round)`` of the
    interventions a variant had (drawn after that round, where they act)."""
    # Events differ in length, so one x-axis pooled by round would mix a different set of
    # events at every round (the last rounds show the longest event alone). One column per
    # event keeps each event on its own rounds; reading down a column compares the variants
    # on the same rounds and the same real curve, an intervened twin right below its twin.
    plt = _pyplot()
    variants = list(dict.fromkeys(v for v, _, _ in curves))
    events = list(dict.fromkeys(e for _, _, e in curves))
    shown = events[:MAX_EVENTS]
    rows = [(d, v) for d in label_space for v in variants]
    fig, axes = plt.subplots(len(rows), len(shown), squeeze=False, sharey=True, sharex="col",
                             figsize=(2.6 * len(shown) + 1.0, 1.5 * len(rows) + 1.0),
                             layout="constrained")
    for (dim, variant), ax_row in zip(rows, axes, strict=True):
        for event, ax in zip(shown, ax_row, strict=True):
            c = curves.get((variant, dim, event))
            if c is None:
                ax.set_visible(False)
                continue
            x = np.arange(len(c["real"]))
            for j in range(len(label_space[dim])):
                ax.plot(x, c["real"][:, j], lw=1.6, color=f"C{j}")
                ax.plot(x, c["sim"][:, j], lw=1.2, ls="--", color=f"C{j}")
            ax.axvspan(-0.5, warmup_rounds - 0.5, color=WARMUP_COLOUR, zorder=0)
            for _, after in interventions.get(variant, ()):  # the variant's name names it
                ax.axvline(after + 0.5, **INTERVENTION_STYLE)
            ax.set_title(f"{variant} · {event}", fontsize=8)
            ax.set_ylim(0, 1)
            ax.xaxis.get_major_locator().set_params(integer=True)  # rounds are whole numbers
        ax_row[0].set_ylabel(f"{dim} share")
    handles = _option_handles(label_space) + _style_handles(
        ("real (solid)", "-"), ("simulated (dashed)", "--")) + [
        _patch(WARMUP_COLOUR, "warm-up: real actions")]
    for name, after in sorted({iv for v in variants for iv in interventions.get(v, ())}):
        handles.append(_line("black", "-.", f"intervention {name} (variants …+{name}):\n"
                             f"acts after round {after}"))
    more = f"; {len(events) - len(shown)} more events in per_simulation.csv" \
        if len(events) > len(shown) else ""
    fig.suptitle("Real vs simulated shares per round of each event, by variant (seeds pooled)"
                 + more, fontsize=10)
    fig.supxlabel("round of the event")
    return _save(fig, path, handles)


def kl_by_event(bars: Mapping[str, Mapping[str, Mapping[Any, Interval]]],
                overall: Mapping[str, Mapping[str, Interval]],
                floors: Mapping[str, Mapping[Any, float]], note: str,
                path: str | Path) -> Path:
    """KL(real ‖ simulated) per event with whiskers, one bar per variant, one panel per
    dimension, then a last group with the mean over events.

    ``bars[dim][variant][event]`` and ``overall[dim][variant]`` are ``(mean, low, high)``;
    ``floors[dim][event]`` is each event's sampling floor of KL, drawn dashed (the last group's
    floor is their mean); ``note`` says what the whiskers are."""
    plt = _pyplot()
    dims = list(bars)
    events = sorted({e for d in dims for per in bars[d].values() for e in per}, key=str)
    groups = [*events, "mean of events"]
    fig, axes = plt.subplots(len(dims), 1, squeeze=False, layout="constrained",
                             figsize=(max(6.0, 0.9 * len(groups) + 2), 3.2 * len(dims) + 0.8))
    x = np.arange(len(groups), dtype=float)
    x[-1] += 0.5  # the mean stands apart from the events
    for ax, dim in zip(axes[:, 0], dims, strict=True):
        variants = list(bars[dim])
        width = 0.8 / max(len(variants), 1)
        for j, variant in enumerate(variants):
            cells = [bars[dim][variant].get(e, (math.nan,) * 3) for e in events]
            cells.append(overall[dim].get(variant, (math.nan,) * 3))
            mean, lo, hi = (np.array(col, dtype=float) for col in zip(*cells, strict=True))
            pos = x + (j - (len(variants) - 1) / 2) * width
            ax.bar(pos, mean, width, label=variant, color=f"C{j}")
            ax.errorbar(pos, mean, yerr=np.nan_to_num(np.abs(np.array([lo, hi]) - mean)),
                        fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        line = [floors[dim].get(e, math.nan) for e in events]
        line.append(float(np.nanmean(line)) if not all(map(math.isnan, line)) else math.nan)
        ax.hlines(line, x - 0.45, x + 0.45, colors="black", linestyles="dashed", linewidth=1,
                  label="sampling floor (each event's real replies)")
        ax.axvline(x[-1] - 0.75, color="0.5", lw=0.8, ls=":")
        ax.set_xticks(x, groups, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"KL, {dim} (nats)")
        ax.set_xlabel("held-out event")
    fig.suptitle("KL(real ‖ simulated) per held-out event, lower is better\n" + note,
                 fontsize=10)
    handles, _ = axes[0, 0].get_legend_handles_labels()
    floor_last = sorted(handles, key=lambda h: h.get_label().startswith("sampling floor"))
    return _save(fig, path, floor_last)


def comparison(panels: Mapping[str, Sequence[tuple[str, str, float, float, float]]],
               floors: Mapping[str, Interval], note: str, path: str | Path) -> Path:
    """KL per variant with its interval, one panel per dimension.

    ``panels[dim]`` lists ``(variant, kind, kl, low, high)`` in table order, ``kind`` one of
    :data:`KIND_STYLE` (colour and hatch); ``floors[dim]`` is the sampling floor of KL with its
    interval, drawn as a dashed line in a band; ``note`` says what the whiskers are."""
    plt = _pyplot()
    dims = list(panels)
    n = max(len(rows) for rows in panels.values())
    fig, axes = plt.subplots(len(dims), 1, squeeze=False, layout="constrained",
                             figsize=(max(5.0, 0.8 * n + 2), 3.2 * len(dims) + 0.8))
    for ax, dim in zip(axes[:, 0], dims, strict=True):
        rows = panels[dim]
        kl = np.array([r[2] for r in rows], dtype=float)
        for i, (_, kind, *_) in enumerate(rows):
            colour, hatch = KIND_STYLE[kind]
            ax.bar(i, kl[i], color=colour, hatch=hatch, edgecolor="0.3")
        err = np.abs(np.array([[r[3] for r in rows], [r[4] for r in rows]], dtype=float) - kl)
        ax.errorbar(np.arange(len(rows)), kl, yerr=np.nan_to_num(err), fmt="none",
                    ecolor="black", capsize=4)
        if dim in floors:
            mean, lo, hi = floors[dim]
            ax.axhspan(lo, hi, color="0.85", zorder=0)
            ax.axhline(mean, color="black", ls="--", lw=1)
        ax.set_xticks(np.arange(len(rows)), [r[0] for r in rows], rotation=20)
        ax.set_ylabel(f"KL, {dim} (nats)")
        ax.set_xlabel("variant")
    kinds = [k for k in KIND_STYLE if any(r[1] == k for rows in panels.values() for r in rows)]
    handles = [_patch(KIND_STYLE[k][0], k if k != "no LLM" else "no LLM (hatched)",
                      hatch=KIND_STYLE[k][1]) for k in kinds]
    if floors:
        handles += [_line("black", "--", "sampling floor"),
                    _patch("0.85", "its interval", edge=False)]
    fig.suptitle(f"KL(real ‖ simulated) per variant, lower is better\n{note}", fontsize=10)
    return _save(fig, path, handles)


def forecast(rounds: np.ndarray, horizons: Mapping[str, np.ndarray],
             real: Mapping[str, np.ndarray], sim: Mapping[tuple[str, str], np.ndarray],
             label_space: Mapping[str, Sequence[str]], variants: Sequence[str],
             path: str | Path) -> Path:
    """One small panel per dimension × variant (rows of 3): real shares solid, simulated
    dashed, one colour per option, after the warm-up; dotted lines split the rollout rounds
    into the horizons, each named at the top of its span."""
    plt = _pyplot()
    panels = [(d, v) for d in label_space for v in variants]
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows + 0.6),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    for ax, (dim, variant) in zip(axes.ravel(), panels, strict=False):
        for j in range(len(label_space[dim])):
            ax.plot(rounds, real[dim][:, j], lw=1.6, color=f"C{j}")
            ax.plot(rounds, sim[(variant, dim)][:, j], lw=1.2, ls="--", color=f"C{j}")
        for k, (name, hr) in enumerate(horizons.items()):
            if hr.size == 0:
                continue
            if k:
                ax.axvline(hr[0] - 0.5, color="0.5", ls=":", lw=1)
            ax.text((hr[0] + hr[-1]) / 2, 1.01, name, ha="center", va="bottom", fontsize=7,
                    color="0.35", transform=ax.get_xaxis_transform())  # above the data
        ax.set_title(f"{variant} — {dim}", fontsize=9, pad=12)
        ax.set_ylim(0, 1)
        ax.xaxis.get_major_locator().set_params(integer=True)  # rounds are whole numbers
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    handles = _option_handles(label_space) + _style_handles(
        ("real (solid)", "-"), ("simulated (dashed)", "--"),
        ("horizon boundary: short, mid, long\nare thirds of the rollout rounds", ":"))
    fig.suptitle("Forecast after the warm-up: real vs simulated shares per round, pooled over "
                 "events and seeds", fontsize=10)
    fig.supxlabel("round")
    fig.supylabel("share")
    return _save(fig, path, handles)


def sweep(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], path: str | Path) -> Path:
    """KL against each swept key (mean over the other keys' trials), one line per variant."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), squeeze=False,
                             layout="constrained")
    for ax, key in zip(axes[0], keys, strict=True):
        values = sorted({str(r[key]) for r in rows})
        for variant in sorted({r["variant"] for r in rows}):
            ys = []
            for v in values:
                kls = [r["kl"] for r in rows if r["variant"] == variant and str(r[key]) == v
                       and not math.isnan(r["kl"])]
                ys.append(sum(kls) / len(kls) if kls else math.nan)
            ax.plot(values, ys, marker="o", label=variant)
        ax.set_xlabel(key)
        ax.set_ylabel("KL(real ‖ simulated) (nats)")
    fig.suptitle("Sweep: KL against each swept key (mean over the other keys), lower is better",
                 fontsize=10)
    handles, _ = axes[0][0].get_legend_handles_labels()
    return _save(fig, path, handles)


def plan(rows: Sequence[Mapping[str, Any]], target: tuple[str, str], path: str | Path) -> Path:
    """The best candidate interventions' effects with their intervals, best on top."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.6), layout="constrained")
    names = [f"{r['intervention']} ({r['variant']})" for r in rows][::-1]
    eff = [r["effect"] for r in rows][::-1]
    err = [[r["effect"] - r["low"] for r in rows][::-1], [r["high"] - r["effect"]
                                                         for r in rows][::-1]]
    ax.barh(names, eff, xerr=err, color="tab:blue", alpha=0.8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"change of the {target[0]}={target[1]} share vs the untouched twin "
                  "(difference of shares, 0–1)")
    ax.set_title(f"Best interventions for the {target[0]}={target[1]} share\n"
                 "(mean change over paired simulations, whiskers: bootstrap interval)",
                 fontsize=10)
    return _save(fig, path, [])


# ---------------------------------------------------------------- helpers


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _option_handles(label_space: Mapping[str, Sequence[str]]) -> list[Any]:
    """One colour per option (of the dimension with the most options; colours are by index)."""
    options = max(label_space.values(), key=len)
    return [_line(f"C{j}", "-", o) for j, o in enumerate(options)]


def _style_handles(*styles: tuple[str, str]) -> list[Any]:
    return [_line("black", ls, label) for label, ls in styles]


def _line(colour: str, ls: str, label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=colour, ls=ls, lw=1.5, label=label)


def _patch(colour: str, label: str, hatch: str | None = None, edge: bool = True) -> Any:
    from matplotlib.patches import Patch

    return Patch(facecolor=colour, hatch=hatch, edgecolor="0.3" if edge else colour,
                 label=label)


def _save(fig: Any, path: str | Path, handles: Sequence[Any]) -> Path:
    """Put the legend to the right of the top-right axes, outside every axes, so that it covers
    neither data nor the title above, and write the PNG."""
    extra = fig.get_default_bbox_extra_artists()  # titles, axes, figure labels
    if handles:
        ax = fig.axes[fig.axes[0].get_gridspec().ncols - 1]  # the first row's last column
        legend = ax.legend(handles=list(handles), loc="upper left", bbox_to_anchor=(1.03, 1.0),
                           borderaxespad=0, fontsize=8, frameon=False)
        legend.set_in_layout(False)  # a tall legend would push the first row's panels apart
        extra.append(legend)
    out = Path(path)
    fig.savefig(out, dpi=110, bbox_inches="tight", bbox_extra_artists=extra)  # legend included
    _pyplot().close(fig)
    return out
