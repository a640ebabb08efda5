"""The MF-LLM round loop on Ray (re-exports only).

``driver``: :func:`simulate` and the round loop :func:`run_rounds`, with the recovery beside
them; ``layout``: which simulations a run has (:func:`plan`) and which shard owns which agents
(:func:`shard_sims`); ``teacher``: the rounds replayed with the real actions, for training
(:func:`teacher_forced`); ``shard``, ``population``, ``inference``: the actors' classes;
``ray_env``: starting or joining Ray.
"""

from mfray.engine.driver import MAX_RECOVERIES, ActorLost, run_rounds, simulate
from mfray.engine.layout import SimSpec, plan, shard_sims
from mfray.engine.teacher import ForcedRound, teacher_forced

__all__ = ["MAX_RECOVERIES", "ActorLost", "ForcedRound", "SimSpec", "plan", "run_rounds",
           "shard_sims", "simulate", "teacher_forced"]
