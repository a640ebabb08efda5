"""Labellers: one interface that turns action texts into labels, keyed by decision id.

A :class:`Labeller` maps :class:`LabelItem` s to :class:`LabelResult` s keyed by ``item_id``
(a decision id such as ``f"{run_id}:{sim_id}:{agent_index}"``, or a post id), never by
position. A failure is a result with ``ok = False`` and an error, never a placeholder label.

- :class:`HumanLabeller`: the labels of the data;
- :class:`ZeroShotLabeller`: a local model scores the options after the ``label`` template;
- :class:`OpenAICompatibleLabeller`: an OpenAI-compatible ``/chat/completions`` endpoint
  (vLLM serve, SGLang, a hosted API) through :mod:`mfray.llm.openai`;
- :class:`RuleLabeller`: dimensions that follow from the data (Weibo's ``behaviour``).

:func:`labels_check` measures a labeller against the human labels of a dataset.

Prompt convention (zero-shot and HTTP): the ``label`` template rendered with the item; chat
models get it as the user message after :data:`LABEL_SYSTEM` (a labelling-specific system line,
not the simulator's ``system.txt``); raw (non-chat) local models read it followed by
``Answer:`` and score the options with a leading space.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mfray.data.schema import Dataset
from mfray.errors import ConfigError, DataError
from mfray.evaluate.metrics import f1_scores
from mfray.llm import LanguageModel, ModelError
from mfray.llm.openai import HTTPClient, RequestFailed
from mfray.prompts import render

ROLE = "label"
LABEL_SYSTEM = "You label social media replies. You answer with exactly one of the given options."
#: Short option definitions shown in the template's shared part, per dimension.
DEFINITIONS: dict[str, str] = {
    "stance": ("support: the reply agrees with the post or backs it up.\n"
               "deny: the reply says the post is false or disagrees with it.\n"
               "query: the reply asks for more information or evidence.\n"
               "comment: the reply comments without taking a side.\n"),
    "behaviour": ("share: the user reposts without adding text.\n"
                  "comment: the user writes a reply.\n"),
}


@dataclass(frozen=True)
class LabelItem:
    """One action to label: its id, its text, the post it replies to, the dimension and its
    options (in the dataset's fixed order)."""

    item_id: str
    text: str
    context: str
    dimension: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class LabelResult:
    """A label (``ok``) or the reason there is none (``ok = False``, ``label = None``)."""

    label: str | None
    ok: bool
    error: str | None = None


def _fail(error: str) -> LabelResult:
    return LabelResult(None, False, error)


@runtime_checkable
class Labeller(Protocol):
    """Anything that labels items; results keyed by ``item_id``."""

    def label(self, items: Sequence[LabelItem]) -> dict[str, LabelResult]:
        """One result per item, keyed by its id."""
        ...


def _check_ids(items: Sequence[LabelItem]) -> None:
    """Results are keyed by id, so two items with one id would silently collide."""
    dup = [i for i, n in Counter(it.item_id for it in items).items() if n > 1]
    if dup:
        raise ValueError(f"item ids must be unique; repeated: {dup[:5]}")


def label_prompt(item: LabelItem) -> str:
    """The ``label`` template rendered for one item (the user message of chat models)."""
    return render(ROLE, {"dimension": item.dimension, "options": ", ".join(item.options),
                         "definitions": DEFINITIONS.get(item.dimension, "")},
                  {"context": item.context, "text": item.text, "dimension": item.dimension,
                   "options": ", ".join(item.options)})


# ---------------------------------------------------------------------------------- human, rules


class HumanLabeller:
    """The labels of the data: ``mapping[item_id][dimension]`` (None = unlabelled)."""

    def __init__(self, mapping: Mapping[str, Mapping[str, str | None]]) -> None:
        self.mapping = mapping

    def label(self, items: Sequence[LabelItem]) -> dict[str, LabelResult]:
        """The human label of each item; ``ok = False`` where the data has none."""
        _check_ids(items)
        out = {}
        for it in items:
            lab = self.mapping.get(it.item_id, {}).get(it.dimension)
            out[it.item_id] = (LabelResult(lab, True) if lab in it.options
                               else _fail(f"no human {it.dimension} label for {it.item_id}"
                                          if lab is None else f"human label {lab!r} not an option"))
        return out


def human_labels(dataset: Dataset) -> dict[str, dict[str, str | None]]:
    """The mapping of :class:`HumanLabeller` for a dataset, keyed by post id."""
    posts = dataset.posts.select(["post_id", "labels"]).to_pylist()
    return {p["post_id"]: dict(p["labels"] or {}) for p in posts}


def behaviour_rule(item: LabelItem) -> str:
    """Weibo's ``behaviour``: a repost with empty text is a ``share``, else a ``comment``."""
    return "share" if not item.text.strip() else "comment"


WEIBO_RULES: dict[str, Callable[[LabelItem], str | None]] = {"behaviour": behaviour_rule}


class RuleLabeller:
    """Labels from plain functions, one per dimension; None from a rule means no label."""

    def __init__(self, rules: Mapping[str, Callable[[LabelItem], str | None]]) -> None:
        self.rules = rules

    def label(self, items: Sequence[LabelItem]) -> dict[str, LabelResult]:
        """Apply the dimension's rule to each item."""
        _check_ids(items)
        out = {}
        for it in items:
            rule = self.rules.get(it.dimension)
            lab = rule(it) if rule is not None else None
            out[it.item_id] = (LabelResult(lab, True) if lab is not None and lab in it.options
                               else _fail(f"no rule for dimension {it.dimension!r}" if rule is None
                                          else f"rule gave {lab!r}, not one of {it.options}"))
        return out


# ---------------------------------------------------------------------------------- zero-shot


class ZeroShotLabeller:
    """A local model scores the options after the rendered template; the argmax is the label.

    ``chat=True`` wraps the prompt with ``model.chat_prompt(LABEL_SYSTEM, prompt)`` and scores
    the bare options; ``chat=False`` appends ``Answer:`` and scores ``" " + option``. Items are
    grouped by (dimension, options) and scored ``batch_size`` at a time; a ``ModelError`` fails
    that batch only.
    """

    def __init__(self, model: LanguageModel, *, chat: bool, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.chat, self.batch_size = model, chat, batch_size

    def _prompt(self, item: LabelItem) -> str:
        text = label_prompt(item)
        if self.chat:
            return self.model.chat_prompt(LABEL_SYSTEM, text)  # type: ignore[attr-defined]
        return text + "Answer:"

    def label(self, items: Sequence[LabelItem]) -> dict[str, LabelResult]:
        """The most likely option of each item."""
        _check_ids(items)
        groups: dict[tuple[str, tuple[str, ...]], list[LabelItem]] = {}
        for it in items:
            groups.setdefault((it.dimension, it.options), []).append(it)
        out: dict[str, LabelResult] = {}
        for (_, options), group in groups.items():
            scored = options if self.chat else tuple(" " + o for o in options)
            for s in range(0, len(group), self.batch_size):
                batch = group[s:s + self.batch_size]
                try:
                    logp = np.asarray(self.model.score([self._prompt(it) for it in batch], scored))
                except ModelError as exc:
                    out.update((it.item_id, _fail(f"model error: {exc}")) for it in batch)
                    continue
                for it, row in zip(batch, logp, strict=True):
                    out[it.item_id] = LabelResult(options[int(np.argmax(row))], True)
        return out


# ---------------------------------------------------------------------------------- HTTP


class OpenAICompatibleLabeller:
    """Labels from an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint.

    One request per item, ``batch_size`` in flight at once (the chat protocol has no batch);
    temperature 0, a few tokens; the first word of the reply, matched case-insensitively to
    the options, is the label. Key handling, retries, timeouts and the rate limit are those of
    :class:`~mfray.llm.openai.HTTPClient`; malformed replies fail the item, never retried.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 batch_size: int = 16, max_retries: int = 3, timeout_s: float = 30,
                 requests_per_s: float | None = None, backoff_s: float = 0.5,
                 max_tokens: int = 5) -> None:
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        self.client = HTTPClient(base_url, api_key_env=api_key_env, concurrency=batch_size,
                                 max_retries=max_retries, timeout_s=timeout_s,
                                 requests_per_s=requests_per_s, backoff_s=backoff_s)
        self.model, self.max_tokens = model, max_tokens

    def label(self, items: Sequence[LabelItem]) -> dict[str, LabelResult]:
        """One request per item, concurrently; results keyed by id."""
        _check_ids(items)
        results = self.client.map(self._label_one, items)
        return {it.item_id: r for it, r in zip(items, results, strict=True)}

    def _label_one(self, item: LabelItem) -> LabelResult:
        payload = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                   "messages": [{"role": "system", "content": LABEL_SYSTEM},
                                {"role": "user", "content": label_prompt(item)}]}
        try:
            reply = self.client.post("chat/completions", payload)
        except RequestFailed as exc:
            return _fail(str(exc))
        return _parse(reply, item.options, self.client.scrub)


def _parse(reply: Any, options: tuple[str, ...], scrub: Callable[[str], str]) -> LabelResult:
    """The label in ``choices[0].message.content``: its first word, case-insensitively."""
    try:
        content = reply["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"content is {type(content).__name__}")
    except (KeyError, IndexError, TypeError) as exc:
        return _fail(scrub(f"malformed response ({exc}): {str(reply)[:200]!r}"))
    words = content.split()
    word = words[0].strip(".,:;!?\"'*()[]").lower() if words else ""
    by_lower = {o.lower(): o for o in options}
    if word in by_lower:
        return LabelResult(by_lower[word], True)
    return _fail(scrub(f"reply {content[:100]!r} is not one of {list(options)}"))


# ---------------------------------------------------------------------------------- check


def reply_items(dataset: Dataset, *, events: Sequence[str] | None = None,
                dimension: str = "stance") -> tuple[list[LabelItem], list[str]]:
    """The real replies of the chosen events that carry a human label of ``dimension``, as
    items keyed by post id (context: the thread's source post), and their human labels."""
    if dimension not in dataset.label_space:
        raise DataError(f"dimension {dimension!r} not in the label space "
                        f"{sorted(dataset.label_space)}", field="labels")
    known = dataset.event_ids()
    chosen = list(events) if events else known
    missing = [e for e in chosen if e not in known]
    if missing:
        raise DataError(f"unknown events {missing}; known: {known}")
    options = dataset.label_space[dimension]
    items, truth = [], []
    for event in chosen:
        posts = dataset.posts_of(event).select(
            ["post_id", "context_post_id", "text", "labels"]).to_pylist()
        text_of = {p["post_id"]: p["text"] for p in posts}
        for p in posts:
            human = (p["labels"] or {}).get(dimension)
            if p["context_post_id"] is None or human is None:
                continue
            items.append(LabelItem(p["post_id"], p["text"], text_of.get(p["context_post_id"], ""),
                                   dimension, options))
            truth.append(human)
    return items, truth


def labels_check(dataset: Dataset, labeller: Labeller, *, events: Sequence[str] | None = None,
                 dimension: str = "stance") -> dict[str, Any]:
    """Agreement of a labeller with the human labels of the real replies of ``events`` (all
    by default). A failed item counts as a miss in accuracy and F1 (never as a class).

    Returns ``n``, ``n_failed``, ``accuracy``, ``micro_f1``, ``macro_f1``, ``options``,
    ``counts`` ({option: {"human", "predicted"}}), ``confusion`` (rows human, columns
    predicted, in option order, plus a last ``failed`` column), ``errors`` (up to 5 examples).
    """
    items, truth = reply_items(dataset, events=events, dimension=dimension)
    options = dataset.label_space[dimension]
    if not items:
        raise DataError(f"no labelled replies for {dimension!r} in events {events or 'all'}")
    results = labeller.label(items)
    index = {o: i for i, o in enumerate(options)}
    y_true = np.array([index[t] for t in truth])
    res = [results.get(it.item_id) or _fail("the labeller returned no result") for it in items]
    y_pred = np.array([index[r.label] if r.ok and r.label in index else -1 for r in res])
    confusion = np.zeros((len(options), len(options) + 1), dtype=int)
    np.add.at(confusion, (y_true, np.where(y_pred < 0, len(options), y_pred)), 1)
    micro, macro = f1_scores(y_true, y_pred, len(options))
    return {
        "dimension": dimension, "events": list(events) if events else dataset.event_ids(),
        "options": list(options), "n": len(items), "n_failed": int((y_pred < 0).sum()),
        "accuracy": float((y_true == y_pred).mean()), "micro_f1": micro, "macro_f1": macro,
        "counts": {o: {"human": int((y_true == i).sum()), "predicted": int((y_pred == i).sum())}
                   for i, o in enumerate(options)},
        "confusion": confusion.tolist(),
        "errors": [r.error for r in res if not r.ok][:5],
    }


def format_check(result: Mapping[str, Any]) -> str:
    """A readable report of :func:`labels_check`: the figures and the confusion matrix."""
    opts = result["options"]
    w = max(9, *(len(o) + 1 for o in opts))
    figures = (f"n = {result['n']}, failed = {result['n_failed']}, "
               f"accuracy = {result['accuracy']:.3f}, macro-F1 = {result['macro_f1']:.3f}, "
               f"micro-F1 = {result['micro_f1']:.3f}")
    lines = [f"labels check: {result['dimension']} on {', '.join(result['events'])}", figures, "",
             "human \\ predicted".ljust(w + 8) + "".join(o.rjust(w) for o in opts)
             + "failed".rjust(w) + "total".rjust(w)]
    for o, row in zip(opts, result["confusion"], strict=True):
        lines.append(o.ljust(w + 8) + "".join(str(v).rjust(w) for v in row)
                     + str(sum(row)).rjust(w))
    lines.append("predicted".ljust(w + 8)
                 + "".join(str(result["counts"][o]["predicted"]).rjust(w) for o in opts)
                 + str(result["n_failed"]).rjust(w) + str(result["n"]).rjust(w))
    lines.extend(f"error: {e}" for e in result.get("errors", []))
    return "\n".join(lines)
