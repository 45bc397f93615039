"""The rollout state machine as a declared table: which stage may follow which, and what each action asks for."""
from __future__ import annotations

from types import MappingProxyType

from controlplane.deployments.models import Stage
from controlplane.errors import IllegalTransition

TRANSITIONS: MappingProxyType[Stage, frozenset[Stage]] = MappingProxyType({
    Stage.shadow: frozenset({Stage.canary, Stage.paused, Stage.rolled_back, Stage.retired}),
    Stage.canary: frozenset({Stage.active, Stage.paused, Stage.rolled_back, Stage.retired}),
    Stage.active: frozenset({Stage.rolled_back, Stage.retired}),
    Stage.paused: frozenset({Stage.shadow, Stage.canary, Stage.rolled_back, Stage.retired}),
    Stage.rolled_back: frozenset(),
    Stage.retired: frozenset(),
})

# Promotion moves one step forward; it always needs an approval.
PROMOTIONS: MappingProxyType[Stage, Stage] = MappingProxyType({Stage.shadow: Stage.canary, Stage.canary: Stage.active})


def allowed(current: Stage) -> list[Stage]:
    """Stages reachable from `current`, in declaration order."""
    return [s for s in Stage if s in TRANSITIONS[current]]


def check(current: Stage, requested: Stage, *, action: str | None = None) -> Stage:
    """Returns `requested` if the table allows it from `current`, else raises IllegalTransition."""
    if requested not in TRANSITIONS[current]:
        raise IllegalTransition(current, requested, allowed=allowed(current), action=action)
    return requested


def promotion_target(current: Stage) -> Stage:
    """The stage a promotion leads to from `current`."""
    target = PROMOTIONS.get(current)
    if target is None:
        raise IllegalTransition(current, "promote", allowed=allowed(current), action="promote")
    return check(current, target, action="promote")


def resume_target(current: Stage, paused_from: Stage | None) -> Stage:
    """The stage a paused deployment resumes to: the one it was paused in."""
    if current != Stage.paused or paused_from is None:
        raise IllegalTransition(current, "resume", allowed=allowed(current), action="resume")
    return check(current, paused_from, action="resume")
