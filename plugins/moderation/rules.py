"""A channel's policy compiled for matching: term sets and filter context. Pure (re2 only)."""

from __future__ import annotations

from dataclasses import dataclass

from .filters import GLOBAL_EMOTES, FilterContext
from .folding import Folded
from .policy import ChannelPolicy, PolicyError
from .terms import Term, TermError, TermSet
from .verdict import Finding, Reason, Source


@dataclass(frozen=True, kw_only=True)
class CompiledChannel:
    policy: ChannelPolicy
    blocked: TermSet
    permitted: TermSet
    filter_context: FilterContext

    @classmethod
    def compile(cls, policy: ChannelPolicy) -> CompiledChannel:
        """Raises PolicyError naming the term list of a refused pattern."""
        sets = []
        for name in ("blocked_terms", "permitted_terms"):
            try:
                sets.append(TermSet([Term.parse(p) for p in getattr(policy, name)]))
            except TermError as exc:
                raise PolicyError(name, str(exc)) from None
        context = FilterContext(
            emotes=GLOBAL_EMOTES | frozenset(policy.emotes), link_allow=policy.link_allow
        )
        return cls(policy=policy, blocked=sets[0], permitted=sets[1], filter_context=context)

    def blocked_findings(self, folded: Folded) -> list[Finding]:
        policy = self.policy
        return [
            Finding(
                action=policy.blocked_action,
                reason=Reason(
                    source=Source.RULE,
                    name="blocked_term",
                    detail=f"matched blocked term {self.blocked.terms[i].pattern!r}",
                ),
                duration_s=policy.blocked_duration_s,
            )
            for i in self.blocked.matches(folded)
        ]
