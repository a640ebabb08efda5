"""The inference actor's class: one long-lived model serving every shard.

Each round it receives the prompts of all shards, orders them canonically (by simulation,
agent, dimension) and scores them in chunks of ``resources.chunk`` prompts. The order and the
chunks therefore depend only on the run, never on how many shards produced the prompts, which
is what makes a 1-shard and a 4-shard run bit-identical. A failed model call fails only the
decisions of its chunk (or only the prompts it names, :mod:`mfray.llm.retry`) and is reported,
never hidden. The model itself comes from :func:`mfray.llm.build.build_model`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from mfray.config import PolicyConfig, ResourcesConfig
from mfray.engine.placement import Placed
from mfray.engine.shard import Key, Requests, Scored
from mfray.llm.base import LanguageModel, ModelError, model_input
from mfray.llm.build import build_model
from mfray.llm.retry import RetryingModel, answers
from mfray.policy import calibrate, clean_summary, first_line


def _canonical(shard_requests: Sequence[Requests], part: tuple[int, int] = (0, 1)
               ) -> list[tuple[Key, int, int]]:
    """The requests of the simulations ``sim_id ≡ part[0] (mod part[1])`` as (key, shard,
    position), in key order: the same whatever the sharding."""
    mine, n = part
    return sorted(((key, s, j) for s, r in enumerate(shard_requests)
                   for j, key in enumerate(r.keys) if key[0] % n == mine), key=lambda t: t[0])


def _share(groups: list[list[tuple[int, int]]], out: list[Scored]) -> None:
    """Each group's first (scored) answer for the others of the group, which asked the same
    prompt; the model time is split over all of them."""
    for rows in groups:
        s0, j0 = rows[0]
        latency = out[s0].latency_s[j0] / len(rows)
        for s, j in rows:
            out[s].log_scores[j], out[s].errors[j] = out[s0].log_scores[j0], out[s0].errors[j0]
            out[s].tokens_in[j], out[s].latency_s[j] = out[s0].tokens_in[j0], latency


def _calibrate(shard_requests: Sequence[Requests], flat: list[tuple[Key, int, int]],
               out: list[Scored]) -> None:
    """Calibrated simulations (``mf-cal``): each round's log-scores, per dimension, shifted so
    that their mean probability is the simulation's target (:func:`mfray.policy.calibrate`).
    This actor holds every agent of its simulations, in key order: the result does not
    depend on the shards or the actors. Failed decisions take no part."""
    targets = {sim: t for r in shard_requests for sim, t in r.targets.items()}
    rows: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (sim, _, d), s, j in flat:
        if sim in targets and out[s].log_scores[j] is not None:
            rows.setdefault((sim, d), []).append((s, j))
    for (sim, d), where in rows.items():
        fitted = calibrate(np.stack([out[s].log_scores[j] for s, j in where]), targets[sim][d])
        for (s, j), row in zip(where, fitted, strict=True):
            out[s].log_scores[j] = row


def _empty(n: int) -> Scored:
    return Scored([None] * n, [None] * n, [0.0] * n, [None] * n, [], [])


class InferenceServer(Placed):
    """Holds the model; scores every shard's requests of a round in one canonical order. With
    several actors, ``part = (a, n)``: this one answers the simulations ``sim_id ≡ a (mod n)``
    and leaves the other positions of its answers empty (:func:`mfray.engine.shard.merge`)."""

    def __init__(self, cfg: PolicyConfig, label_space: Mapping[str, Sequence[str]],
                 data_dir: str | None = None, model: LanguageModel | None = None,
                 prompt_log: str | None = None, meanfield_adapter: str | None = None,
                 part: tuple[int, int] = (0, 1), resources: ResourcesConfig | None = None
                 ) -> None:
        self.cfg, self.part = cfg, part
        self.resources = resources or ResourcesConfig()
        self.prompt_log = prompt_log
        self.model = model if model is not None else \
            build_model(cfg, data_dir, meanfield_adapter is not None, self.resources)
        # policy calls go through one bounded retry of the prompts that did not fail
        self.retrying = RetryingModel(self.model)
        # the text mean field's model: the base model with its own adapter (or none), never
        # the policy's adapter. An engine that switches adapters (vLLM) serves both roles;
        # otherwise a second model is loaded at the first summary.
        self._summarizer: LanguageModel | None = self.model
        self._summarizer_args = (replace(cfg, adapter=meanfield_adapter), data_dir, False,
                                 self.resources)
        self._switch = None
        if model is None and (meanfield_adapter or cfg.adapter):
            if hasattr(self.model, "set_adapter"):
                self._switch = (meanfield_adapter, cfg.adapter)
            else:
                self._summarizer = None
        self.options = [tuple(o) for o in label_space.values()]
        self.dims = list(label_space)
        tok = getattr(self.model, "tokenizer", None)
        self.chat = bool(getattr(tok, "chat_template", None))

    def model_id(self) -> str:
        return self.model.model_id

    def format(self, prompt: str) -> str:
        """The rendered template as the model reads it (the chat template where it has one)."""
        return model_input(self.model, prompt)

    def score_one(self, requests: Requests) -> Scored:
        """:meth:`score_round` (or :meth:`generate_round` in text mode) for one shard."""
        if self.cfg.mode == "text":
            return self.generate_round(requests)[0]
        return self.score_round(requests)[0]

    def score_round(self, *shard_requests: Requests) -> list[Scored]:
        """Score the requests of all shards; one :class:`Scored` per shard, aligned."""
        if self.cfg.mode == "text":
            return self.generate_round(*shard_requests)
        flat = _canonical(shard_requests, self.part)
        out = [_empty(len(r.keys)) for r in shard_requests]
        for d, options in enumerate(self.options):
            # one score per distinct prompt: seeds of a simulation often ask the same (the
            # first rollout round; every round of mf-cal), in the same canonical order
            same: dict[str, list[tuple[int, int]]] = {}
            for _, s, j in (t for t in flat if t[0][2] == d):
                same.setdefault(self.format(shard_requests[s].prompts[j]), []).append((s, j))
            unique = list(same.items())
            for c in range(0, len(unique), self.resources.chunk):
                part = unique[c:c + self.resources.chunk]
                self._score_chunk([rows[0] for _, rows in part], [p for p, _ in part],
                                  options, out)
                _share([rows for _, rows in part], out)
                if self.prompt_log:  # with the model's option scores: `mfray distill` reads them
                    scores = [out[s].log_scores[j] for _, rows in part for s, j in rows]
                    self._log([shard_requests[s].keys[j] for _, rows in part for s, j in rows],
                              [p for p, rows in part for _ in rows], options=options,
                              scores=scores)
        _calibrate(shard_requests, flat, out)
        return out

    def generate_round(self, *shard_requests: Requests) -> list[Scored]:
        """Text mode: generate every shard's posts in one canonical order, each from its own
        seeded stream with the paper's decoding, keep the first line, then label it with the
        same model (zero-shot, the ``label`` template). Empty output or a failed call is a
        failed decision."""
        from mfray.labels import LabelItem, ZeroShotLabeller

        flat = _canonical(shard_requests, self.part)
        out = [_empty(len(r.keys)) for r in shard_requests]
        for o in out:
            o.texts.extend([None] * len(o.errors))
            o.labels.extend([None] * len(o.errors))
        c = self.cfg
        size = self.resources.chunk
        for start in range(0, len(flat), size):
            chunk = [(s, j) for _, s, j in flat[start:start + size]]
            t0 = time.perf_counter()
            prompts = [self.format(shard_requests[s].prompts[j]) for s, j in chunk]
            if self.prompt_log:
                self._log([shard_requests[s].keys[j] for s, j in chunk], prompts)
            seeds = [shard_requests[s].seeds[j] for s, j in chunk]
            raw, failed = answers(lambda prompts=prompts, seeds=seeds: self.retrying.generate(
                prompts, max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                top_p=c.top_p, top_k=c.top_k, repetition_penalty=c.repetition_penalty,
                seeds=seeds), len(chunk))
            for n, message in failed.items():
                s, j = chunk[n]
                out[s].errors[j] = message
            items = []
            for (s, j), text in zip(chunk, raw, strict=True):
                post = first_line(text) if text is not None else None
                out[s].texts[j] = post
                if post is None and not out[s].errors[j]:
                    out[s].errors[j] = "empty output"
                if post is not None:
                    items += [LabelItem(f"{s}:{j}:{dim}", post, shard_requests[s].contexts[j],
                                        dim, options)
                              for dim, options in zip(self.dims, self.options, strict=True)]
            results = ZeroShotLabeller(self.model, chat=self.chat).label(items)
            per = (time.perf_counter() - t0) / len(chunk)
            tokens = self._token_counts(prompts)  # the posts' prompts, not the labels'
            for n, (s, j) in enumerate(chunk):
                out[s].latency_s[j] = per
                out[s].tokens_in[j] = tokens[n] if tokens else None
                if out[s].errors[j]:
                    continue
                res = {dim: results[f"{s}:{j}:{dim}"] for dim in self.dims}
                unlabelled = [r.error for r in res.values() if not r.ok]
                if unlabelled:
                    out[s].errors[j] = f"labelling failed: {unlabelled[0]}"
                else:
                    out[s].labels[j] = {dim: r.label for dim, r in res.items()}
        return out

    def _score_chunk(self, chunk: list[tuple[int, int]], prompts: list[str],
                     options: Sequence[str], out: list[Scored]) -> None:
        t0 = time.perf_counter()
        scores, failed = answers(lambda: self.retrying.score(prompts, options), len(prompts))
        per = (time.perf_counter() - t0) / len(chunk)
        tokens = self._token_counts(prompts)
        for n, (s, j) in enumerate(chunk):
            out[s].latency_s[j] = per
            out[s].tokens_in[j] = tokens[n] if tokens else None
            row = None if n in failed else np.asarray(scores[n], dtype=float)
            if row is None:
                out[s].errors[j] = failed[n]
            elif row.shape != (len(options),) or np.isnan(row).any() \
                    or not np.isfinite(row).any():
                out[s].errors[j] = f"model error: invalid option scores {row.tolist()!r}"
            else:
                out[s].log_scores[j] = row

    def summarize(self, requests: list[tuple[int, str]], max_new_tokens: int,
                  repetition_penalty: float = 1.0) -> dict[int, str | None]:
        """New text mean fields, greedy and in simulation order (so deterministic); a failed
        chunk gives None, and those simulations keep their previous summary."""
        out: dict[int, str | None] = {}
        mine, n = self.part
        requests = [(sim_id, p) for sim_id, p in requests if sim_id % n == mine]
        for c in range(0, len(requests), self.resources.chunk):
            chunk = requests[c:c + self.resources.chunk]
            prompts = [self.format(p) for _, p in chunk]
            if self.prompt_log:
                self._log([(sim_id, -1, -1) for sim_id, _ in chunk], prompts, "meanfield")
            if self._summarizer is None:
                self._summarizer = build_model(*self._summarizer_args)
            try:
                if self._switch:
                    self._summarizer.set_adapter(self._switch[0])  # type: ignore[attr-defined]
                texts = self._summarizer.generate(prompts, max_new_tokens=max_new_tokens,
                                                  temperature=0.0,
                                                  repetition_penalty=repetition_penalty)
            except ModelError:
                texts = [""] * len(chunk)
            finally:
                if self._switch:
                    self._summarizer.set_adapter(self._switch[1])  # type: ignore[attr-defined]
            out.update({sim_id: clean_summary(t) for (sim_id, _), t in zip(chunk, texts,
                                                                           strict=True)})
        return out

    def _log(self, keys: list[Key], prompts: list[str], role: str = "policy",
             options: Sequence[str] | None = None, scores: list[Any] | None = None) -> None:
        """Append prompts to the prompt log: key (sim, agent, dimension; -1 where none), role
        (``policy`` or ``meanfield``) and the prompt as the model read it; in choice mode also
        the options and the model's scores of them (null where the call failed)."""
        extra = [{}] * len(keys) if scores is None else [
            {"options": list(options or ()),
             "log_scores": None if sc is None else [float(v) for v in sc]} for sc in scores]
        with open(self.prompt_log, "a", encoding="utf-8") as f:
            f.writelines(json.dumps({"key": list(key), "role": role, "prompt": prompt} | x)
                         + "\n" for key, prompt, x in zip(keys, prompts, extra, strict=True))

    def _token_counts(self, prompts: list[str]) -> list[int] | None:
        encode = getattr(self.model, "encode", None)
        return [len(ids) for ids in encode(prompts)] if encode else None
