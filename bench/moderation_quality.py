"""`python -m bench moderation-quality`: precision, recall, F1 and false-positive rate of the
moderation cascade and of each of its layers alone, against alt-profanity-check alone, on the
labeled game-and-stream chat in bench/corpus/moderation_*.tsv. No server: the core runs over an
in-memory store, each message from its own user so no flood or duplicate window mixes in.

A message counts as flagged when its action is not `allow` (the anchor: predict_prob >= 0.5).
The learning curve is the policy-by-example classifier alone, trained on the first N
messages of the tuning part (shuffled: the order moderators might have reviewed them in) and
scored on the held-out part, flagging at P(disallowed) >= 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from plugins.moderation.cascade import Cascade, Message, Predict
from plugins.moderation.categorize import Lexicon
from plugins.moderation.examples import Example, ExampleModel
from plugins.moderation.filters import FILTER_NAMES
from plugins.moderation.folding import fold
from plugins.moderation.policy import parse_policy
from plugins.moderation.profanity import ProfanityModel
from plugins.moderation.rules import CompiledChannel
from plugins.moderation.store import MemoryStore

from .report import write_json

CORPUS = Path(__file__).with_name("corpus")
SPLITS = ("tune", "heldout")
NO_FILTERS = {"filters": {name: {"enabled": False} for name in FILTER_NAMES}}


@dataclass(frozen=True)
class Scores:
    num_messages: int
    precision: float
    recall: float
    f1: float
    false_positive_rate: float


def load_split(split: str) -> list[tuple[int, str]]:
    rows = []
    for line in (CORPUS / f"moderation_{split}.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            label, text = line.split("\t", 1)
            rows.append((int(label), text))
    return rows


def scores(labels: Sequence[int], flagged: Sequence[bool]) -> Scores:
    tp = sum(1 for y, f in zip(labels, flagged, strict=True) if y and f)
    fp = sum(1 for y, f in zip(labels, flagged, strict=True) if not y and f)
    fn = sum(1 for y, f in zip(labels, flagged, strict=True) if y and not f)
    negatives = sum(1 for y in labels if not y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / negatives if negatives else 0.0
    return Scores(len(labels), round(precision, 4), round(recall, 4), round(f1, 4), round(fpr, 4))


async def run_cascade(
    texts: Sequence[str], predict: Predict, lexicon: Lexicon, raw_policy: dict[str, object]
) -> list[bool]:
    cascade = Cascade(store=MemoryStore(), predict=predict, lexicon=lexicon, clock=time.time)
    policy = parse_policy({**raw_policy, "escalation": {"enabled": False}})
    channel = CompiledChannel.compile(policy)
    messages = [
        Message(message_id=str(n), user_id=f"viewer-{n}", text=text) for n, text in enumerate(texts)
    ]
    verdicts = await cascade.check("quality", channel, messages)
    return [v.action.value != "allow" for v in verdicts]


def systems(model: ProfanityModel) -> dict[str, Callable[[Sequence[str]], list[bool]]]:
    async def model_predict(texts: Sequence[str]) -> list[float]:
        return model.predict_prob(texts)

    async def zeros(texts: Sequence[str]) -> list[float]:
        return [0.0] * len(texts)

    full, empty = Lexicon(), Lexicon(entries=())

    def cascade(predict: Predict, lexicon: Lexicon, policy: dict[str, object]) -> Callable[
        [Sequence[str]], list[bool]
    ]:  # fmt: skip
        return lambda texts: asyncio.run(run_cascade(texts, predict, lexicon, policy))

    def anchor(texts: Sequence[str]) -> list[bool]:
        from profanity_check import predict_prob

        return [float(p) >= 0.5 for p in predict_prob(list(texts))]

    return {
        "anchor: alt-profanity-check alone (p >= 0.5)": anchor,
        "full cascade (default policy)": cascade(model_predict, full, {}),
        "layer: spam filters alone": cascade(zeros, empty, {}),
        "layer: game-chat lexicon alone": cascade(zeros, full, NO_FILTERS),
        "layer: classifier in the cascade alone": cascade(model_predict, empty, NO_FILTERS),
    }


def learning_curve(
    train: Sequence[tuple[int, str]], test: Sequence[tuple[int, str]], *, seed: int = 0
) -> list[dict[str, object]]:
    order = list(train)
    random.Random(seed).shuffle(order)
    labels = [label for label, _ in test]
    words = [fold(text).words for _, text in test]
    curve = []
    for num_decisions in (10, 20, 50, 100, 150, len(order)):
        seen = order[:num_decisions]
        model = ExampleModel(
            [Example(text=text, disallowed=bool(label)) for label, text in seen], min_per_class=1
        )
        flagged = [model.predict(w) >= 0.5 for w in words]
        curve.append({"num_decisions": len(seen), **asdict(scores(labels, flagged))})
    return curve


def add_arguments(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = scenarios.add_parser("moderation-quality", help="moderation precision/recall/F1/FPR")
    p.add_argument(
        "--json", type=Path, default=Path(__file__).with_name("results") / "moderation-quality.json"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = ProfanityModel.load()
    results: dict[str, dict[str, dict[str, object]]] = {}
    for split in SPLITS:
        rows = load_split(split)
        labels = [label for label, _ in rows]
        texts = [text for _, text in rows]
        results[split] = {
            name: asdict(scores(labels, flag(texts))) for name, flag in systems(model).items()
        }
    curve = learning_curve(load_split("tune"), load_split("heldout"))
    report = {
        "scenario": "moderation-quality",
        "corpus": "bench/corpus/moderation_{tune,heldout}.tsv (written for Banterbox)",
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "results": results,
        "learning_curve": curve,
    }
    write_json(args.json, report)
    for split, table in results.items():
        print(f"\n{split}: system | n | precision | recall | F1 | FPR")
        for name, s in table.items():
            print(
                f"  {name} | {s['num_messages']} | {s['precision']:.3f} | {s['recall']:.3f} | "
                f"{s['f1']:.3f} | {s['false_positive_rate']:.3f}"
            )
    print("\npolicy by example, trained on N tuning decisions, on the held-out part:")
    for point in curve:
        f1, fpr = point["f1"], point["false_positive_rate"]
        print(f"  N={point['num_decisions']}: F1 {f1:.3f}, FPR {fpr:.3f}")
    print(f"\nwrote {args.json}")
    return 0
