"""Policy by example: the per-channel classifier learns a rule no list has (backseating)."""

from __future__ import annotations

import time

from plugins.moderation.cascade import Cascade, Message
from plugins.moderation.categorize import Lexicon
from plugins.moderation.examples import Example, ExampleModel
from plugins.moderation.folding import fold
from plugins.moderation.policy import parse_policy
from plugins.moderation.rules import CompiledChannel
from plugins.moderation.store import MemoryStore
from plugins.moderation.verdict import Action

BACKSEAT = ["go left at the fork", "use your ult now", "you should go to the shop first",
            "press dodge earlier", "equip the other sword"]  # fmt: skip
CHAT = ["nice play", "love the stream", "gg everyone", "what a run", "hi from Spain"]


def model(**kwargs: int) -> ExampleModel:
    examples = [Example(text=t, disallowed=True) for t in BACKSEAT]
    examples += [Example(text=t, disallowed=False) for t in CHAT]
    return ExampleModel(examples, **kwargs)


def test_it_separates_the_channel_rule_from_chat() -> None:
    learned = model()
    assert learned.ready and learned.num_examples == (5, 5)
    assert learned.predict(fold("use the shop and go left").words) > 0.9
    assert learned.predict(fold("love this run").words) < 0.2
    assert learned.predict(fold("zzz qqq").words) == 0.5  # nothing seen: no opinion
    assert not ExampleModel([Example(text="a b", disallowed=True)]).ready


async def test_the_cascade_holds_what_the_examples_disallow() -> None:
    async def no_profanity(texts: object) -> list[float]:
        return [0.0] * len(texts)  # type: ignore[arg-type]

    cascade = Cascade(store=MemoryStore(), predict=no_profanity, lexicon=Lexicon(), clock=time.time)
    channel = CompiledChannel.compile(parse_policy({"examples_threshold": 0.8}))
    messages = [
        Message(message_id="a", user_id="a", text="go to the shop and use your ult"),
        Message(message_id="b", user_id="b", text="what a stream"),
    ]
    held, fine = await cascade.check("c", channel, messages, examples=model())
    assert held.action is Action.HOLD and held.categories["examples"] > 0.8
    assert (
        held.reasons[0].name == "examples" and "5 allowed, 5 disallowed" in held.reasons[0].detail
    )
    assert fine.action is Action.ALLOW and fine.categories["examples"] < 0.5
