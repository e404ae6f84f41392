"""The cascade from a message to its verdict, over the layers and a Store; never the plugin API.

Knows the Store and the layers' own interfaces, never the plugin context: the plugin hands it
a store, a profanity predictor and (maybe) a judge. A batch is one classifier call and one
judge call, whatever its size.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .categorize import CategoryScores, Lexicon
from .examples import ExampleModel
from .filters import run_filters
from .folding import fold
from .judge import Ruling
from .policy import ChannelPolicy
from .rules import CompiledChannel
from .state import check_state, strike, take_permit
from .store import Store
from .verdict import Action, Finding, Reason, Source, Verdict

Predict = Callable[[Sequence[str]], Awaitable[list[float]]]
JudgeCall = Callable[[str, Sequence[str]], Awaitable[Ruling]]  # (policy, texts) -> ruling
ESCALATED = frozenset({Action.DELETE, Action.TIMEOUT})  # what counts as an offence


@dataclass(frozen=True, kw_only=True)
class Message:
    message_id: str
    user_id: str
    text: str
    user_name: str = ""
    roles: frozenset[str] = frozenset()


@dataclass(frozen=True, kw_only=True)
class _Fast:
    """One message after the fast layers."""

    findings: tuple[Finding, ...]
    categories: CategoryScores
    joined: str  # the folded text, for the duplicate windows


MemoKey = tuple[int, str, frozenset[str]]


class TextMemo:
    """The text-only layers' results per (policy scope, text, roles), bounded: chat repeats
    itself ("gg", "LUL", copypasta), and a repeated line need not be folded, matched or
    classified again. A scope names one compiled policy; a changed policy gets a new one."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._entries: dict[MemoKey, _Fast] = {}
        self._max_entries = max_entries

    def get(self, key: MemoKey) -> _Fast | None:
        return self._entries.get(key)

    def put(self, key: MemoKey, value: _Fast) -> None:
        if len(self._entries) >= self._max_entries:
            # Oldest quarter out (dicts keep insertion order): amortised O(1) per put.
            for old in list(self._entries)[: self._max_entries // 4]:
                del self._entries[old]
        self._entries[key] = value


class Cascade:
    def __init__(
        self,
        *,
        store: Store,
        predict: Predict,
        lexicon: Lexicon,
        judge: JudgeCall | None = None,
        memo: TextMemo | None = None,
        memo_scope: int = 0,
        clock: Callable[[], float],
    ) -> None:
        self._memo = memo
        self._memo_scope = memo_scope
        self._store = store
        self._predict = predict
        self._lexicon = lexicon
        self._judge = judge
        self._clock = clock

    async def check(
        self,
        channel_name: str,
        channel: CompiledChannel,
        messages: Sequence[Message],
        *,
        examples: ExampleModel | None = None,
    ) -> list[Verdict]:
        policy = channel.policy
        exempt = [bool(m.roles & policy.exempt_roles) for m in messages]
        todo = [i for i, skip in enumerate(exempt) if not skip]
        pure: dict[int, _Fast] = {}
        misses = []
        for i in todo:
            key = (self._memo_scope, messages[i].text, messages[i].roles)
            hit = self._memo.get(key) if self._memo is not None else None
            if hit is None:
                misses.append(i)
            else:
                pure[i] = hit
        profanity = await self._predict([messages[i].text for i in misses])
        for i, score in zip(misses, profanity, strict=True):
            pure[i] = self._pure(channel, messages[i], score)
            if self._memo is not None:
                self._memo.put((self._memo_scope, messages[i].text, messages[i].roles), pure[i])
        fast = {
            i: await self._stateful(channel_name, channel, messages[i], pure[i], examples)
            for i in todo
        }
        judged = await self._run_judge(channel, messages, fast)
        verdicts = []
        for i, message in enumerate(messages):
            if exempt[i]:
                verdicts.append(Verdict(action=Action.ALLOW, score=0.0))
                continue
            findings = [*fast[i].findings, *([judged[i]] if i in judged else [])]
            verdicts.append(
                await self._decide(channel_name, channel, message, findings, fast[i].categories)
            )
        return verdicts

    def _pure(self, channel: CompiledChannel, message: Message, profanity: float) -> _Fast:
        """The layers that depend on the text and roles only (memoised per channel policy)."""
        policy = channel.policy
        folded = channel.permitted.cut(fold(message.text))
        findings = channel.blocked_findings(folded)
        findings += run_filters(message.text, policy.filters, message.roles, channel.filter_context)
        categories = self._lexicon.score(folded, profanity=profanity)
        for name, score in categories.scores.items():
            setting = policy.categories.get(name)
            if setting is None or setting.level == 0 or score < setting.threshold:
                continue
            matched = {e.phrase for e in categories.matched if e.category == name}
            phrases = ", ".join(sorted(matched))
            found = f"; matched {phrases}" if phrases else ""
            detail = f"score {score:.2f} >= level {setting.level} ({setting.threshold:.2f}){found}"
            findings.append(
                Finding(
                    action=setting.action,
                    reason=Reason(source=Source.CLASSIFIER, name=name, detail=detail),
                    score=score,
                )
            )
        return _Fast(findings=tuple(findings), categories=categories, joined=folded.joined)

    async def _stateful(
        self,
        channel_name: str,
        channel: CompiledChannel,
        message: Message,
        pure: _Fast,
        examples: ExampleModel | None,
    ) -> _Fast:
        """The layers that read and count per-user state (link permits, windows), and the
        channel's example classifier, which learns, so is never memoised."""
        findings = list(pure.findings)
        if examples is not None and examples.ready:
            findings.append(_example_finding(examples, pure.joined, channel.policy))
        if any(f.reason.name == "links" for f in findings) and await take_permit(
            self._store, channel_name, message.user_id
        ):
            findings = [f for f in findings if f.reason.name != "links"]
        findings += await check_state(
            self._store, channel.policy, channel_name, message.user_id, pure.joined,
            now=self._clock(),
        )  # fmt: skip
        return _Fast(findings=tuple(findings), categories=pure.categories, joined=pure.joined)

    async def _run_judge(
        self, channel: CompiledChannel, messages: Sequence[Message], fast: dict[int, _Fast]
    ) -> dict[int, Finding]:
        settings = channel.policy.judge
        if self._judge is None or settings.mode == "off" or not settings.policy.strip():
            return {}
        if settings.mode == "all":
            chosen = list(fast)
        else:
            chosen = [
                i for i, f in fast.items()
                if not f.findings
                and settings.uncertain_low <= _risk(f) < settings.uncertain_high
            ]  # fmt: skip
        if not chosen:
            return {}
        ruling = await self._judge(settings.policy, [messages[i].text for i in chosen])
        out: dict[int, Finding] = {}
        for n, i in enumerate(chosen):
            if ruling.p_yes is None:
                reason = Reason(source=Source.JUDGE, name="degraded", detail=ruling.detail)
                out[i] = Finding(action=Action.ALLOW, reason=reason, score=0.0)
                continue
            p = ruling.p_yes[n]
            breaks = p >= settings.threshold
            detail = f"P(breaks the channel policy) = {p:.2f} by {ruling.model}"
            out[i] = Finding(
                action=Action.HOLD if breaks else Action.ALLOW,
                reason=Reason(source=Source.JUDGE, name="policy", detail=detail),
                score=p,
            )
        return out

    async def _decide(
        self,
        channel_name: str,
        channel: CompiledChannel,
        message: Message,
        findings: list[Finding],
        categories: CategoryScores,
    ) -> Verdict:
        acting = [f for f in findings if f.action is not Action.ALLOW]
        reasons = tuple(f.reason for f in findings)
        scores = dict(categories.scores)
        for finding in findings:  # the judge's and the example classifier's own categories
            if (finding.reason.source, finding.reason.name) in _OWN_CATEGORIES:
                scores[finding.reason.name] = finding.score
        risk = max([*scores.values(), *(f.score for f in acting)], default=0.0)
        if not acting:
            return Verdict(action=Action.ALLOW, score=risk, categories=scores, reasons=reasons)
        worst = max(acting, key=lambda f: (f.action.severity, f.duration_s))
        action, duration_s = worst.action, worst.duration_s
        escalation = channel.policy.escalation
        if escalation.enabled and action in ESCALATED:
            penalty = await strike(
                self._store, channel.policy, channel_name, message.user_id, now=self._clock()
            )
            if penalty.action.severity >= action.severity:
                duration_s = max(duration_s, penalty.duration_s)
                action = penalty.action
            detail = f"strike {penalty.strike}: {penalty.action.value}"
            if penalty.action is Action.TIMEOUT:
                detail += f" {penalty.duration_s} s"
            reasons += (Reason(source=Source.RULE, name="escalation", detail=detail),)
        return Verdict(
            action=action,
            score=risk,
            categories=scores,
            reasons=reasons,
            duration_s=duration_s if action in (Action.TIMEOUT, Action.BAN) else 0,
            silent=all(f.silent for f in acting),
        )


_OWN_CATEGORIES = frozenset({(Source.JUDGE, "policy"), (Source.CLASSIFIER, "examples")})


def _example_finding(model: ExampleModel, joined: str, policy: ChannelPolicy) -> Finding:
    p = model.predict(joined.split())
    allowed, disallowed = model.num_examples
    detail = (
        f"P(disallowed) = {p:.2f} by the channel's example classifier "
        f"({allowed} allowed, {disallowed} disallowed examples)"
    )
    return Finding(
        action=Action.HOLD if p >= policy.examples_threshold else Action.ALLOW,
        reason=Reason(source=Source.CLASSIFIER, name="examples", detail=detail),
        score=p,
    )


def _risk(fast: _Fast) -> float:
    return max(fast.categories.scores.values(), default=0.0)
