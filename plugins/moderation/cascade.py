"""The cascade from a message to its verdict, over the layers and a Store; never the plugin API.

Knows the Store and the layers' own interfaces, never the plugin context: the plugin hands it
a store, a profanity predictor and (maybe) a judge. A batch is one classifier call, one
store call for its windows and one judge call, whatever its size.
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
from .state import Penalty, Sender, check_windows, count_strikes, take_permit
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
    allow: Verdict | None = None  # the verdict, when no layer found anything: shared


@dataclass(frozen=True, kw_only=True)
class Decided:
    verdicts: list[Verdict]  # their offences already counted in the store


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
        """Verdicts in input order, their strikes counted."""
        decided = await self.decide(channel_name, channel, messages, examples=examples)
        return decided.verdicts

    async def decide(
        self,
        channel_name: str,
        channel: CompiledChannel,
        messages: Sequence[Message],
        *,
        examples: ExampleModel | None = None,
        durable: bool = True,
    ) -> Decided:
        """Verdicts in input order, their offences committed in the store. A batch is one
        classifier call, one store call for its windows, one round of strike reads and one
        judge call; a line seen before (memo) is not folded or matched again, and an allowed
        one reuses its verdict. `durable=False` leaves the offences' disk sync to the
        caller's next durable write, which it must make before it acts on the verdicts
        (the plugin writes every acting verdict's audit entry: an offence is one)."""
        exempt_roles = channel.policy.exempt_roles
        todo = [i for i, m in enumerate(messages) if not (m.roles and m.roles & exempt_roles)]
        pure = await self._pure_all(channel, [messages[i] for i in todo])
        stateful = await self._stateful_all(
            channel_name, channel, [messages[i] for i in todo], pure, examples
        )
        fast = dict(zip(todo, stateful, strict=True))
        judged = await self._run_judge(channel, messages, fast)
        verdicts: list[Verdict | None] = []
        decided: list[tuple[int, _Decision]] = []
        for i in range(len(messages)):
            found = fast.get(i)
            if found is None:  # exempt
                verdicts.append(_EXEMPT)
            elif i not in judged and found.allow is not None:
                verdicts.append(found.allow)
            else:
                findings = [*found.findings, *([judged[i]] if i in judged else [])]
                verdicts.append(None)
                decided.append((i, _Decision.of(findings, found.categories)))
        # Escalation: the batch's offences counted together, each user's in input order.
        escalation = channel.policy.escalation
        offending = [
            (i, d) for i, d in decided
            if escalation.enabled and d.action in ESCALATED
        ]  # fmt: skip
        penalties = await count_strikes(
            self._store, channel.policy, channel_name,
            [messages[i].user_id for i, _ in offending], now=self._clock(), durable=durable,
        )  # fmt: skip
        penalty_of = {i: p for (i, _), p in zip(offending, penalties, strict=True)}
        for i, decision in decided:
            verdicts[i] = decision.verdict(penalty_of.get(i))
        return Decided(verdicts=verdicts)  # type: ignore[arg-type]

    async def _pure_all(self, channel: CompiledChannel, messages: Sequence[Message]) -> list[_Fast]:
        """The text-only layers of every message: memo hits, then one classifier call for the
        misses."""
        memo, scope = self._memo, self._memo_scope
        found: list[_Fast | None] = [
            memo.get((scope, m.text, m.roles)) if memo is not None else None for m in messages
        ]
        misses = [n for n, hit in enumerate(found) if hit is None]
        if misses:
            profanity = await self._predict([messages[n].text for n in misses])
            for n, score in zip(misses, profanity, strict=True):
                message = messages[n]
                found[n] = self._pure(channel, message, score)
                if memo is not None:
                    memo.put((scope, message.text, message.roles), found[n])  # type: ignore[arg-type]
        return found  # type: ignore[return-value]

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
        allow = None
        if not findings:  # what _decide gives a message nothing else finds anything in
            scores = dict(categories.scores)
            allow = Verdict(
                action=Action.ALLOW, score=max(scores.values(), default=0.0), categories=scores
            )
        return _Fast(
            findings=tuple(findings), categories=categories, joined=folded.joined, allow=allow
        )

    async def _stateful_all(
        self,
        channel_name: str,
        channel: CompiledChannel,
        messages: Sequence[Message],
        pure: Sequence[_Fast],
        examples: ExampleModel | None,
    ) -> list[_Fast]:
        """The layers that read and count per-user state (link permits, windows: one store
        call for the batch), and the channel's example classifier, which learns, so is never
        memoised. A message they find nothing in keeps its memoised result."""
        senders = [
            Sender(user_id=m.user_id, joined=p.joined) for m, p in zip(messages, pure, strict=True)
        ]
        windows = await check_windows(
            self._store, channel.policy, channel_name, senders, now=self._clock()
        )
        learned = examples is not None and examples.ready
        out: list[_Fast] = []
        for message, fast, counted in zip(messages, pure, windows, strict=True):
            links = fast.findings and any(f.reason.name == "links" for f in fast.findings)
            if not (counted or learned or links):
                out.append(fast)
                continue
            findings = list(fast.findings)
            if learned:
                assert examples is not None
                findings.append(_example_finding(examples, fast.joined, channel.policy))
            if links and await take_permit(self._store, channel_name, message.user_id):
                findings = [f for f in findings if f.reason.name != "links"]
            findings += counted
            out.append(
                _Fast(findings=tuple(findings), categories=fast.categories, joined=fast.joined)
            )
        return out

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


@dataclass(frozen=True, kw_only=True)
class _Decision:
    """One message's verdict before escalation: what its findings say."""

    action: Action
    duration_s: int
    score: float
    categories: dict[str, float]
    reasons: tuple[Reason, ...]
    acting: tuple[Finding, ...]

    @classmethod
    def of(cls, findings: Sequence[Finding], categories: CategoryScores) -> _Decision:
        acting = tuple(f for f in findings if f.action is not Action.ALLOW)
        scores = dict(categories.scores)
        for finding in findings:  # the judge's and the example classifier's own categories
            if (finding.reason.source, finding.reason.name) in _OWN_CATEGORIES:
                scores[finding.reason.name] = finding.score
        risk = max([*scores.values(), *(f.score for f in acting)], default=0.0)
        action, duration_s = Action.ALLOW, 0
        if acting:
            worst = max(acting, key=lambda f: (f.action.severity, f.duration_s))
            action, duration_s = worst.action, worst.duration_s
        reasons = tuple(f.reason for f in findings)
        return cls(
            action=action, duration_s=duration_s, score=risk, categories=scores,
            reasons=reasons, acting=acting,
        )  # fmt: skip

    def verdict(self, penalty: Penalty | None) -> Verdict:
        if not self.acting:
            return Verdict(
                action=Action.ALLOW, score=self.score, categories=self.categories,
                reasons=self.reasons,
            )  # fmt: skip
        action, duration_s, reasons = self.action, self.duration_s, self.reasons
        if penalty is not None:
            if penalty.action.severity >= action.severity:
                duration_s = max(duration_s, penalty.duration_s)
                action = penalty.action
            detail = f"strike {penalty.strike}: {penalty.action.value}"
            if penalty.action is Action.TIMEOUT:
                detail += f" {penalty.duration_s} s"
            reasons += (Reason(source=Source.RULE, name="escalation", detail=detail),)
        return Verdict(
            action=action,
            score=self.score,
            categories=self.categories,
            reasons=reasons,
            duration_s=duration_s if action is Action.TIMEOUT else 0,  # a ban is permanent
            silent=all(f.silent for f in self.acting),
        )


_EXEMPT = Verdict(action=Action.ALLOW, score=0.0)
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
