"""The MeanField actor's class: every simulation's population state, updated once per round.

Per simulation it keeps the numeric mean field and a window of recent actions, and publishes
what the agents of the next round see: the mean field's shares and, for LLM variants, the
population block of the shared prompt part. Decisions are applied sorted by agent index, so the
state never depends on which shard produced them. Plain class; the engine wraps it with
``ray.remote``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mfray.baselines import adds_expected
from mfray.config import SimConfig
from mfray.engine.placement import Placed
from mfray.interventions import Intervention, apply
from mfray.meanfield import NumericMeanField
from mfray.policy import PastAction, meanfield_prompt, population_text
from mfray.variants import variant


@dataclass(frozen=True)
class SimMeta:
    """What the population state needs to know of one simulation."""

    sim_id: int
    event_id: str
    variant: str
    seed: int
    followers: tuple[int | None, ...]  # per agent index, for the `popular` variant
    label: str = ""  # the stored variant name
    intervention: Intervention | None = None
    topic: str = ""  # for the text mean field's prompt


@dataclass(frozen=True)
class SimView:
    """What every agent of one simulation sees in a round."""

    meanfield_id: str
    shares: dict[str, np.ndarray]
    n_seen: dict[str, int]
    population: str | None  # the shared prompt's population block (LLM variants only)


class Population(Placed):
    """Population state of all simulations of a run (the MeanField actor)."""

    def __init__(self, sims: Sequence[SimMeta], label_space: Mapping[str, Sequence[str]],
                 cfg: SimConfig) -> None:
        self.space = {d: tuple(o) for d, o in label_space.items()}
        self.cfg = cfg
        self.sims = {s.sim_id: s for s in sims}
        self.expected = any(adds_expected(s.variant, cfg) for s in sims)
        window = max(cfg.recent_k, cfg.popular_window)
        self.mf = {s.sim_id: NumericMeanField.empty(self.space) for s in sims}
        self.history: dict[int, deque[PastAction]] = {s.sim_id: deque(maxlen=window)
                                                      for s in sims}
        self.meanfield_id = {s.sim_id: f"{s.sim_id}:init" for s in sims}
        self.summary: dict[int, str | None] = dict.fromkeys(self.sims)  # text mean field
        self.round_actions: dict[int, list[PastAction]] = {}

    def publish(self) -> dict[int, SimView]:
        """Every simulation's view for the next round (the engine's one put per round)."""
        out = {}
        for sim_id, meta in self.sims.items():
            mf = self.mf[sim_id]
            text = None
            if variant(meta.variant).shows_population:
                text = population_text(
                    meta.variant, meanfield=mf, history=list(self.history[sim_id]),
                    label_space=self.space, recent_k=self.cfg.recent_k,
                    popular_k=self.cfg.popular_k, popular_window=self.cfg.popular_window,
                    summary=self.summary[sim_id], meanfield_form=self.cfg.meanfield_form,
                    tally_size=self.cfg.tally_size)
            out[sim_id] = SimView(self.meanfield_id[sim_id],
                                  {d: mf.shares(d) for d in self.space},
                                  {d: mf.n(d) for d in self.space}, text)
        return out

    def update(self, round_index: int, decisions: pa.Table) -> list[dict[str, Any]]:
        """Apply one round's decisions (sorted by sim, agent) and return the rounds-table rows
        (without run id and timings, which the driver adds)."""
        names = ["sim_id", "agent_index", "action", "action_text", "ok", "is_warmup"]
        # real histories (training) have no probs; runs that add only draws never read them
        names += ["probs"] if self.expected and "probs" in decisions.column_names else []
        cols = decisions.select(names).to_pydict()
        self.round_actions = {}
        rows: list[dict[str, Any]] = []
        start = 0
        n = len(cols["sim_id"])
        while start < n:
            sim_id = cols["sim_id"][start]
            end = start
            while end < n and cols["sim_id"][end] == sim_id:
                end += 1
            rows.append(self._apply(round_index, sim_id, cols, range(start, end)))
            start = end
        return rows

    def _apply(self, round_index: int, sim_id: int, cols: dict[str, list[Any]],
               idx: range) -> dict[str, Any]:
        meta = self.sims[sim_id]
        order = sorted(idx, key=lambda i: cols["agent_index"][i])
        actions = [cols["action"][i] if cols["ok"][i] else None for i in order]
        labels = {d: [a[d] if a else None for a in actions] for d in self.space}
        probs = None
        if "probs" in cols and adds_expected(meta.variant, self.cfg):  # their distributions
            dist = [cols["probs"][i] if cols["ok"][i] else None for i in order]
            probs = {d: [p[d] if p else None for p in dist] for d in self.space}
        self.mf[sim_id] = self.mf[sim_id].update(self.space, labels, probs)
        done = [PastAction(action, cols["action_text"][i], meta.followers[cols["agent_index"][i]])
                for i, action in zip(order, actions, strict=True) if action is not None]
        self.history[sim_id].extend(done)
        self.round_actions[sim_id] = done
        iv = meta.intervention
        if iv is not None and iv.round == round_index:  # after the round's own decisions
            before = list(self.history[sim_id])
            self.mf[sim_id], history = apply(iv, self.space, self.mf[sim_id], before)
            self.history[sim_id] = deque(history, maxlen=self.history[sim_id].maxlen)
            self.round_actions[sim_id] = done + history[len(before):]
        self.meanfield_id[sim_id] = f"{sim_id}:{round_index}"
        counts = NumericMeanField.empty(self.space).update(self.space, labels)
        mf = self.mf[sim_id]
        return {
            "sim_id": sim_id, "event_id": meta.event_id, "variant": meta.label or meta.variant,
            "seed": meta.seed, "round": round_index, "meanfield_id": self.meanfield_id[sim_id],
            "meanfield_text": mf.render(self.space, self.cfg.meanfield_form, self.cfg.tally_size),
            "meanfield_shares": {d: mf.shares(d).tolist() for d in self.space},
            "counts": {d: list(counts.counts[d]) for d in self.space},
            "n_agents": len(order),
            "n_warmup": sum(1 for i in order if cols["is_warmup"][i]),
            "n_failed": sum(1 for i in order if not cols["ok"][i]),
        }

    def meanfield_requests(self) -> list[tuple[int, str]]:
        """Update prompts of the text mean field for the round just applied, by simulation."""
        return [(sim_id, meanfield_prompt(topic=meta.topic, previous=self.summary[sim_id],
                                          actions=self.round_actions.get(sim_id, []),
                                          label_space=self.space))
                for sim_id, meta in sorted(self.sims.items())
                if variant(meta.variant).keeps_text and sim_id in self.round_actions]

    def set_summaries(self, summaries: Mapping[int, str | None]) -> None:
        """Take the new summaries; a simulation whose generation failed keeps its old one."""
        for sim_id, text in summaries.items():
            if text:
                self.summary[sim_id] = text

    def replay(self, rounds: Sequence[tuple[int, pa.Table]],
               last: Mapping[int, str | None] | None = None) -> None:
        """Rebuild the state from stored rounds (resume, or a restarted actor). ``last``: each
        simulation's last stored mean-field text, from which the simulations that keep a text
        mean field restore their summary (it is not generated again)."""
        for round_index, table in rounds:
            self.update(round_index, table)
        self.set_summaries({sim_id: text for sim_id, text in (last or {}).items()
                            if variant(self.sims[sim_id].variant).keeps_text})
