"""``mfray data convert | info | synth | mix`` and ``mfray labels check``: datasets and labels."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mfray.errors import MfrayError

if TYPE_CHECKING:
    from mfray.data.schema import Dataset

FORMATS = ("rumoureval", "rumdect", "jsonl")


def _load(src: str, fmt: str) -> Dataset:
    """The dataset at ``src`` (a folder, a file, or an archive of either) in format ``fmt``."""
    from mfray.data.archive import is_archive, load_archive

    if not Path(src).exists():
        raise MfrayError(f"{src}: no such file or directory")
    if fmt == "rumoureval":
        from mfray.data.rumoureval import load_rumoureval as load
    elif fmt == "rumdect":
        from mfray.data.rumdect import load_rumdect as load
    else:
        from mfray.data.jsonl import load_jsonl as load
    return load_archive(src, load) if is_archive(src) else load(src)


def cmd_data_convert(args: argparse.Namespace) -> None:
    from mfray.data.schema import write_dataset
    from mfray.data.topics import EARLIEST, retopic

    t0 = time.perf_counter()
    ds = _load(args.src, args.format)
    if args.topic_rule != EARLIEST:
        ds = retopic(ds, args.topic_rule)
    out = write_dataset(ds, args.out)
    print(f"converted {ds.events.num_rows} events, {ds.posts.num_rows} posts into {out} "
          f"in {time.perf_counter() - t0:.1f} s")
    for line in left_out(ds.notes):
        print(f"  {line}")
    if shared := _shared_posts(ds):
        print(f"  {shared}")
    if unlabelled := _unlabelled(ds):
        print(f"mfray: warning: {unlabelled}", file=sys.stderr)


def _shared_posts(ds: Dataset) -> str | None:
    """A note on post ids found in more than one event (one thread filed under two events):
    kept, since every table keys a post by its event, and said."""
    events: dict[str, set[str]] = {}
    for event, post in zip(ds.posts["event_id"].to_pylist(), ds.posts["post_id"].to_pylist(),
                           strict=True):
        events.setdefault(post, set()).add(event)
    shared = {p: sorted(e) for p, e in events.items() if len(e) > 1}
    if not shared:
        return None
    first = min(shared)
    return (f"{len(shared)} post id(s) appear in more than one event (first: {first} in "
            f"{', '.join(shared[first])}); each event keeps its own copy")


def _unlabelled(ds: Dataset) -> str | None:
    """A warning for a dataset none of whose posts has a label (label files that match no
    post, or none found): it converts, but nothing of it can warm a run up or score one."""
    from mfray.data.schema import dataset_info

    info = dataset_info(ds)
    if not info["posts"] or any(sum(n for o, n in counts.items() if o != "unlabelled")
                                for counts in info["labels"].values()):
        return None
    return (f"none of the {info['posts']} posts has a label ({', '.join(ds.label_space)}): "
            + ("the label files name none of them" if ds.notes.get("label_files") else
               "no label file was found") + "; a run on it has no real actions to warm up "
            "with or to be scored against")


def left_out(notes: dict) -> list[str]:
    """What a conversion skipped, could not match or kept of deleted posts, from the loader's
    notes, in words."""
    out = []
    if n := notes.get("reddit_more_stubs_skipped"):
        out.append(f"skipped {n} Reddit 'more' stub(s), placeholders for comments the release "
                   f"does not hold; {notes.get('stance_labels_on_skipped_stubs', 0)} stance "
                   "label(s) name one")
    for key, what in (("stance_labels_without_post", "stance label(s) name no post"),
                      ("veracity_labels_without_thread", "veracity label(s) name no thread")):
        if n := notes.get(key):
            out.append(f"{n} {what} and are left out")
    if n := notes.get("posts_deleted_or_removed"):
        out.append(f"kept {n} post(s) whose text was deleted or removed ([deleted], [removed]) "
                   "with their labels")
    if n := notes.get("posts_without_author"):
        out.append(f"kept {n} post(s) without an author (deleted accounts)")
    return out


def cmd_data_info(args: argparse.Namespace) -> None:
    from mfray.data.schema import dataset_info, format_info, read_dataset

    info = dataset_info(read_dataset(args.dir))
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def cmd_data_synth(args: argparse.Namespace) -> None:
    from mfray.data.schema import write_dataset_parts
    from mfray.data.synthetic import WorldParams, generate_parts

    try:
        params = WorldParams(n_events=args.events, herding=args.herding,
                             event_spread=args.spread, seed=args.seed,
                             min_agents=args.min_agents, max_agents=args.max_agents,
                             warmup=args.warmup)
    except ValueError as exc:
        raise MfrayError(f"synthetic world: {exc}") from None
    from tqdm import tqdm

    _, parts, notes = generate_parts(params)
    agents = params.n_events * (params.min_agents + params.max_agents) // 2
    # a world of a million agents takes a minute or more: say how far it is
    with tqdm(total=params.n_events, desc="events", disable=agents < 1_000_000) as bar:
        def counted() -> Iterator[Dataset]:
            for part in parts:
                bar.update(part.events.num_rows)
                yield part

        out = write_dataset_parts(counted(), args.out, notes)
    n_posts = json.loads((out / "dataset.json").read_text())["posts"]
    print(f"synthetic world: {params.n_events} events, {n_posts} posts in {out}")


def cmd_data_mix(args: argparse.Namespace) -> None:
    from mfray.data.mix import mix_events, reply_mix, source_event
    from mfray.data.schema import read_dataset, write_dataset

    ds = read_dataset(args.dir)
    events = args.events.split(",") if args.events else ds.event_ids()
    mixed, ids = mix_events(ds, events, args.copies, alpha=args.alpha, seed=args.seed,
                            dimension=args.dimension, min_agents=args.min_agents,
                            centre=args.centre, top_up=args.top_up)
    if not ids:
        raise MfrayError(f"no copy has {args.min_agents} replies: the events' label counts "
                         "cannot fill one (lower --min-agents or raise --alpha)")
    out = write_dataset(mixed, args.out)
    dim = args.dimension or next(iter(ds.label_space))
    options = list(ds.label_space[dim])
    print(f"{len(ids)} resampled copies of {len(events)} event(s) in {out} "
          f"(the {ds.events.num_rows} events of {args.dir} kept); {dim} shares of the replies:")
    print(f"{'event':<30} {'replies':>7} " + " ".join(f"{o:>8}" for o in options))
    for event in dict.fromkeys(events):  # each event, then its new copies
        for name in (event, *(i for i in ids if source_event(i) == event)):
            counts = reply_mix(mixed, name, dim)
            shares = " ".join(f"{c / max(counts.sum(), 1):>8.0%}" for c in counts)
            print(f"{name:<30} {counts.sum():>7} {shares}")


def cmd_labels_check(args: argparse.Namespace) -> None:
    from mfray.data.schema import read_dataset
    from mfray.labels import (
        HumanLabeller,
        OpenAICompatibleLabeller,
        ZeroShotLabeller,
        format_check,
        human_labels,
        labels_check,
    )

    ds = read_dataset(args.dir)
    if args.labeller == "human":
        labeller = HumanLabeller(human_labels(ds))
    elif args.labeller == "openai":
        if not (args.url and args.model):
            raise MfrayError("the openai labeller needs --url BASE_URL and --model NAME "
                             "(the key comes from $OPENAI_API_KEY)")
        labeller = OpenAICompatibleLabeller(args.url, args.model)
    else:
        from mfray.llm import load_model

        model = load_model(args.model)
        labeller = ZeroShotLabeller(model, chat=bool(getattr(model.tokenizer, "chat_template",
                                                             None)))
    events = args.events.split(",") if args.events else None
    print(format_check(labels_check(ds, labeller, events=events, dimension=args.dimension)))
