"""A synthetic world with known dynamics, for the demo, tests and sanity checks of the method.

Each event is a population of agents who reply, in arrival order, to one of a few threads. Agent
``i`` of event ``e`` who arrives in round ``t`` (rounds of ``round_size`` agents) takes stance
``k`` with probability

    p(k | x_i, e, m_t) = softmax_k( mu_k + persona_strength · (W x_i)_k + b_{e,k} + herding · (m_{t,k} - base_k) )

- ``mu``: the population-wide log base rates (comment-heavy, like the real threads);
- ``x_i``: persona features read from the agent's profile (:meth:`SyntheticWorld.features`):
  verified, a sceptic trait stated in the self-description, and log followers;
- ``b_e ~ N(0, event_spread²)`` per stance: the event latent, so events differ in base rates as
  real events do, and a policy that memorised other events' base rate is visibly wrong;
- ``m_t``: the shares of the stances taken by all agents of earlier rounds of the same event (the
  numeric mean field; uniform before any decision), with strength ``herding``.

A policy that reads the mean field can infer ``b_e`` and the herding drift; a state-only policy
cannot, so a mean-field policy *should* beat it. :meth:`SyntheticWorld.latent_posterior` is
that inference done exactly (the ``bayes`` variant): the posterior of ``b_e`` given an event's
first agents, for a policy that knows the rule but not the event. The size of the effect is
computed when the world is generated and stored in the dataset notes (``effect``): the KL from
the real rollout distribution to the state-only truth ``softmax(mu + W x)``, to the full truth
given the real mean field, and to the base rate of the other events. Everything is seeded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from scipy.special import logsumexp, softmax

from mfray.data.build import build_dataset
from mfray.data.schema import STANCE, STANCE_OPTIONS, Dataset

FEATURES = ("verified", "sceptic", "log_followers")
#: persona effect on each stance's logit (rows: support, deny, query, comment; cols: FEATURES)
PERSONA_WEIGHTS = np.array(
    [
        [0.6, -0.9, 0.3],
        [-0.4, 1.3, -0.1],
        [-0.3, 0.8, -0.2],
        [0.0, 0.0, 0.0],
    ]
)
BASE_SHARES = np.array([0.20, 0.08, 0.08, 0.64])  # close to the RumourEval reply mix
PROPOSAL_SAMPLES = 8_192  # draws of the event latent weighted by its posterior
PROPOSAL_SCALE = 1.5  # the proposal's widening of the posterior's Laplace approximation
LATENT_SAMPLES = 1_024  # equal-weight draws kept of its posterior
SCEPTIC_DESCRIPTION = "Sceptical reader. I check sources before I share anything."
OTHER_DESCRIPTIONS = (
    "News junkie and coffee drinker.",
    "Dad, runner, football fan.",
    "Student. Opinions my own.",
    "Local politics, music and food.",
)
LOCATIONS = ("London", "Paris", "Toronto", "Sydney", "New York", None)
TEXTS = {
    "support": ("This is confirmed, spread the word.", "True, I saw it reported too."),
    "deny": ("This is false, please stop sharing it.", "Fake. Officials already denied it."),
    "query": ("Is there a source for this?", "Can anyone confirm this?"),
    "comment": ("Thoughts with everyone involved.", "What a day.", "Unbelievable scenes."),
}
CLAIMS = (
    "a bridge in the city centre has collapsed",
    "a famous singer has cancelled the tour",
    "the central bank will raise rates tonight",
    "a hostage situation is under way at a cafe",
    "a new virus case was confirmed at the airport",
    "the president has not been seen in public for ten days",
)


@dataclass(frozen=True)
class WorldParams:
    """Parameters of the synthetic world; the defaults make the mean-field effect clear."""

    n_events: int = 12
    min_agents: int = 120
    max_agents: int = 240
    threads_per_event: int = 4
    event_spread: float = 0.8
    herding: float = 2.0
    persona_strength: float = 1.0
    sceptic_share: float = 0.25
    verified_share: float = 0.1
    round_size: int = 16
    warmup: int = 50  # only used for the stored effect sizes
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_agents <= self.max_agents:
            raise ValueError("need 1 <= min_agents <= max_agents")
        if self.min_agents <= self.warmup:
            raise ValueError(f"min_agents ({self.min_agents}) must exceed warmup "
                             f"({self.warmup}): the known effect is measured on the rollout")
        if self.n_events < 1 or self.threads_per_event < 1 or self.round_size < 1:
            raise ValueError("n_events, threads_per_event and round_size must be >= 1")


@dataclass(frozen=True)
class SyntheticWorld:
    """The true conditional distributions of a generated world."""

    params: WorldParams
    event_logits: dict[str, tuple[float, ...]]

    @property
    def base_logits(self) -> np.ndarray:
        return np.log(BASE_SHARES)

    @staticmethod
    def features(profile: dict[str, Any] | None) -> np.ndarray:
        """Persona features of one profile (missing fields count as 0: a neutral persona)."""
        profile = profile or {}
        followers = profile.get("followers_count") or 0
        return np.array(
            [
                float(bool(profile.get("verified"))),
                float((profile.get("description") or "") == SCEPTIC_DESCRIPTION),
                (np.log10(followers + 1.0) - 2.5) / 1.5,
            ]
        )

    def persona_probs(self, x: np.ndarray) -> np.ndarray:
        """State-only truth: what an agent would do knowing nothing of the event or the crowd."""
        persona = np.atleast_2d(x) @ PERSONA_WEIGHTS.T
        logits = self.base_logits + self.params.persona_strength * persona
        return softmax(logits, axis=1)

    def rule_logits(self, x: np.ndarray, shares: np.ndarray) -> np.ndarray:
        """The rule's logits without the event latent ``b_e``."""
        return (self.base_logits
                + self.params.persona_strength * np.atleast_2d(x) @ PERSONA_WEIGHTS.T
                + self.params.herding * (np.asarray(shares) - BASE_SHARES))

    def probs(self, event_id: str, x: np.ndarray, shares: np.ndarray) -> np.ndarray:
        """The full truth p(stance | persona, event, mean field) for agents with features ``x``."""
        return softmax(self.rule_logits(x, shares) + np.asarray(self.event_logits[event_id]),
                       axis=1)

    def latent_posterior(self, x: np.ndarray, labels: np.ndarray,
                         n_samples: int = LATENT_SAMPLES) -> np.ndarray:
        """Equal-weight samples of an event's latent ``b_e`` given its first agents.

        ``x`` and ``labels`` (stance indices, ``-1`` unlabelled) are the event's first agents
        in arrival order; each saw the shares of the labelled agents of the world's earlier
        rounds, as in :func:`generate`. The posterior of ``b_e`` under the prior
        ``N(0, event_spread²)`` and the world's rule is log-concave: its mode and curvature
        (Newton's method) give a Gaussian proposal, widened by :data:`PROPOSAL_SCALE`, whose
        :data:`PROPOSAL_SAMPLES` draws (a fixed seed) are weighted by posterior / proposal and
        resampled systematically. What a policy that knows the rule but not the event believes
        after those agents; deterministic; with no agents, the prior."""
        labels = np.asarray(labels, dtype=int)
        x = np.asarray(x, dtype=float).reshape(len(labels), len(FEATURES))
        k = len(STANCE_OPTIONS)
        shares = shares_seen(labels, self.params.round_size)
        known = labels >= 0
        rule = self.rule_logits(x[known], shares[known])  # (n, k)
        y = labels[known]
        observed = np.bincount(y, minlength=k).astype(float)
        var = self.params.event_spread ** 2

        def log_post(b: np.ndarray) -> np.ndarray:  # b: (S, k), up to a constant
            out = b @ observed - (b ** 2).sum(axis=1) / (2 * var)
            for i in range(0, len(y), 64):  # 64 agents at a time: memory stays O(S)
                out -= logsumexp(b[:, None, :] + rule[None, i:i + 64, :], axis=2).sum(axis=1)
            return out

        mode = np.zeros(k)
        for _ in range(100):  # Newton's method, halving a step that does not climb
            p = softmax(rule + mode, axis=1)
            grad = observed - p.sum(axis=0) - mode / var
            hess = p.T @ p - np.diag(p.sum(axis=0)) - np.eye(k) / var
            step, here = -np.linalg.solve(hess, grad), log_post(mode[None])[0]
            while log_post((mode + step)[None])[0] < here and np.abs(step).max() > 1e-12:
                step = step / 2
            mode = mode + step
            if np.abs(step).max() < 1e-9:
                break
        chol = np.linalg.cholesky(np.linalg.inv(-hess)) * PROPOSAL_SCALE
        z = np.random.default_rng(0).standard_normal((PROPOSAL_SAMPLES, k))
        draws = mode + z @ chol.T
        logw = log_post(draws) + 0.5 * (z ** 2).sum(axis=1)  # − log proposal, up to a constant
        w = np.exp(logw - logw.max())
        cdf = np.cumsum(w / w.sum())
        picks = np.searchsorted(cdf, (np.arange(n_samples) + 0.5) / n_samples)
        return draws[np.minimum(picks, PROPOSAL_SAMPLES - 1)]

    def predictive(self, latent: np.ndarray, x: np.ndarray, shares: np.ndarray) -> np.ndarray:
        """The rule averaged over samples of the event latent (:meth:`latent_posterior`)."""
        rule = self.rule_logits(x, shares)  # (n, k)
        return softmax(rule[None, :, :] + latent[:, None, :], axis=2).mean(axis=0)

    def to_json(self) -> str:
        return json.dumps({"params": asdict(self.params), "event_logits": self.event_logits})

    @classmethod
    def from_dataset(cls, ds: Dataset) -> SyntheticWorld:
        """Rebuild the world from a dataset written by :func:`generate` (its notes)."""
        world = ds.notes.get("world")
        if ds.name != "synthetic" or not world:
            raise ValueError(f"dataset {ds.name!r} is not a synthetic world")
        return cls(WorldParams(**world["params"]),
                   {e: tuple(v) for e, v in world["event_logits"].items()})


def shares_seen(labels: np.ndarray, round_size: int) -> np.ndarray:
    """The stance shares each of an event's first agents saw: those of the labelled agents of
    earlier rounds (``labels``: stance indices in arrival order, ``-1`` unlabelled), uniform
    before any; one row per agent."""
    k = len(STANCE_OPTIONS)
    labels = np.asarray(labels, dtype=int)
    shares = np.empty((len(labels), k))
    counts = np.zeros(k)
    for r0 in range(0, len(labels), round_size):
        shares[r0:r0 + round_size] = counts / counts.sum() if counts.sum() else 1.0 / k
        seen = labels[r0:r0 + round_size]
        counts += np.bincount(seen[seen >= 0], minlength=k)
    return shares


def generate(params: WorldParams = WorldParams()) -> tuple[SyntheticWorld, Dataset]:
    """Generate the world and its events as a canonical :class:`Dataset` (stance labels only)."""
    world, parts, notes = generate_parts(params)
    parts = list(parts)  # every event first: the notes are complete after the last
    return world, concat_parts(parts, notes())


def generate_parts(params: WorldParams = WorldParams(), events_per_part: int = 64
                   ) -> tuple[SyntheticWorld, Iterator[Dataset], Callable[[], dict[str, Any]]]:
    """The world, its events as datasets of ``events_per_part`` events each, generated one
    part at a time (so that a world of 10⁷ agents is never in memory at once), and its notes,
    complete once the parts are exhausted. The draws are those of one whole world: a world is
    the same however it is cut."""
    rng = np.random.default_rng(params.seed)
    k = len(STANCE_OPTIONS)
    width = max(2, len(str(params.n_events - 1)))  # ids sort in event order
    event_logits = {
        f"synth-{e:0{width}d}": tuple(float(v) for v in rng.normal(0.0, params.event_spread,
                                                                    size=k))
        for e in range(params.n_events)
    }
    world = SyntheticWorld(params, event_logits)
    effects: list[dict[str, Any]] = []

    def parts() -> Iterator[Dataset]:
        start = datetime(2015, 1, 1, tzinfo=UTC)
        ids = list(event_logits)
        for first in range(0, len(ids), events_per_part):
            events, posts = [], []
            for e, event_id in enumerate(ids[first:first + events_per_part], start=first):
                claim = CLAIMS[e % len(CLAIMS)]
                events.append({"event_id": event_id, "topic": f"Reports say that {claim}.",
                               "topic_origin": "given", "source": "synthetic", "split": None,
                               "metadata": json.dumps({"event_logits": event_logits[event_id]})})
                event_posts, effect = _simulate_event(world, event_id, claim, start, rng)
                posts.extend(event_posts)
                effects.append(effect)
                start += timedelta(days=3)
            yield build_dataset("synthetic", {STANCE: STANCE_OPTIONS}, events, posts)

    def notes() -> dict[str, Any]:
        if len(effects) != params.n_events:
            raise RuntimeError("the world's notes are complete once every part is generated")
        return {"world": json.loads(world.to_json()), "effect": _summarise(effects)}

    return world, parts(), notes


def concat_parts(parts: Sequence[Dataset], notes: dict[str, Any]) -> Dataset:
    """One dataset of the parts of :func:`generate_parts`."""
    import pyarrow as pa

    return Dataset(parts[0].name, parts[0].label_space,
                   pa.concat_tables([p.events for p in parts]),
                   pa.concat_tables([p.posts for p in parts]), notes)


def _profile(rng: np.random.Generator, params: WorldParams) -> dict[str, Any]:
    sceptic = rng.random() < params.sceptic_share
    followers = int(rng.lognormal(mean=5.5, sigma=1.8))
    return {
        "screen_name": f"user{rng.integers(10**6):06d}",
        "description": SCEPTIC_DESCRIPTION if sceptic else _pick(rng, OTHER_DESCRIPTIONS),
        "location": LOCATIONS[rng.integers(len(LOCATIONS))],
        "verified": bool(rng.random() < params.verified_share),
        "followers_count": followers,
        "friends_count": int(rng.lognormal(mean=5.0, sigma=1.0)),
        "statuses_count": int(rng.lognormal(mean=7.0, sigma=1.5)),
    }


# The generator draws one value at a time, in an order that fixes every world of a seed. These
# two make the same draws as ``rng.choice(seq)`` and ``rng.choice(k, p=p)`` (numpy's own
# algorithm: one ``integers``, or one uniform against the normalised cumulative
# probabilities; tests/test_synthetic.py checks it) at a fifth of the cost.
def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _draw(rng: np.random.Generator, cdf: np.ndarray) -> int:
    return int(np.searchsorted(cdf / cdf[-1], rng.random(), side="right"))


def _simulate_event(world: SyntheticWorld, event_id: str, claim: str, start: datetime,
                    rng: np.random.Generator) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sources first, then the agents round by round, each round seeing the earlier rounds."""
    p = world.params
    k = len(STANCE_OPTIONS)
    posts: list[dict[str, Any]] = []
    sources = []
    for j in range(p.threads_per_event):
        sid = f"{event_id}-s{j}"
        t = start + timedelta(minutes=5 * j)
        sources.append((sid, t))
        posts.append({"event_id": event_id, "thread_id": sid, "post_id": sid, "parent_id": None,
                      "time": t, "user_id": f"{event_id}-source{j}",
                      "profile": _profile(rng, p), "text": f"BREAKING: {claim}.",
                      "labels": {STANCE: "support"}})
    n = int(rng.integers(p.min_agents, p.max_agents + 1))
    counts = np.zeros(k)
    t = sources[-1][1]
    labels, x_all, shares_seen = [], [], []
    by_thread: dict[str, list[str]] = {sid: [sid] for sid, _ in sources}
    for r0 in range(0, n, p.round_size):
        shares = counts / counts.sum() if counts.sum() else np.full(k, 1.0 / k)
        size = min(p.round_size, n - r0)
        profiles = [_profile(rng, p) for _ in range(size)]
        x = np.stack([world.features(pr) for pr in profiles])
        cdf = np.cumsum(world.probs(event_id, x, shares), axis=1)
        for i in range(size):
            label = _draw(rng, cdf[i])
            t = t + timedelta(seconds=float(rng.exponential(40.0)) + 1.0)
            sid = sources[int(rng.integers(len(sources)))][0]
            parent = by_thread[sid][-1] if rng.random() < 0.3 else sid
            pid = f"{event_id}-r{r0 + i:04d}"
            by_thread[sid].append(pid)
            option = STANCE_OPTIONS[label]
            posts.append({"event_id": event_id, "thread_id": sid, "post_id": pid,
                          "parent_id": parent, "time": t, "user_id": f"{event_id}-u{r0 + i}",
                          "profile": profiles[i],
                          "text": _pick(rng, TEXTS[option]),
                          "labels": {STANCE: option}})
            labels.append(label)
            shares_seen.append(shares)
        counts += np.bincount(labels[r0:], minlength=k)
        x_all.append(x)
    return posts, _effect(world, event_id, np.array(labels), np.vstack(x_all),
                          np.array(shares_seen))


def _effect(world: SyntheticWorld, event_id: str, labels: np.ndarray, x: np.ndarray,
            shares: np.ndarray) -> dict[str, Any]:
    """KL of the event's real rollout distribution to what each kind of policy would predict."""
    from scipy.special import rel_entr

    k = len(STANCE_OPTIONS)
    w = world.params.warmup
    real = np.bincount(labels[w:], minlength=k) + 1e-6
    real = real / real.sum()
    state = world.persona_probs(x[w:]).mean(axis=0)
    truth = world.probs(event_id, x[w:], shares[w:]).mean(axis=0)  # each agent its own shares
    return {"event_id": event_id, "n_agents": len(labels),
            "rollout_counts": np.bincount(labels[w:], minlength=k).tolist(),
            "kl_state_only": float(rel_entr(real, state).sum()),
            "kl_truth": float(rel_entr(real, truth).sum())}


def _summarise(effects: list[dict[str, Any]]) -> dict[str, Any]:
    from scipy.special import rel_entr

    counts = np.array([e["rollout_counts"] for e in effects], dtype=float)
    for i, e in enumerate(effects):
        # a policy that memorised the other events' base rate
        others = counts.sum(axis=0) - counts[i] + 1e-6
        real = counts[i] + 1e-6
        e["kl_other_events_base_rate"] = float(
            rel_entr(real / real.sum(), others / others.sum()).sum())
    return {
        "per_event": effects,
        "mean_kl_state_only": float(np.mean([e["kl_state_only"] for e in effects])),
        "mean_kl_truth": float(np.mean([e["kl_truth"] for e in effects])),
        "mean_kl_other_events_base_rate": float(
            np.mean([e["kl_other_events_base_rate"] for e in effects])),
    }
