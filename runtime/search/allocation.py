"""One global allocation of formats to units (ops, or output features) under a budget of stored bits.

A multiple-choice knapsack: each unit takes exactly one candidate, costs its stored bits and adds
its sensitivity to the predicted KL; minimise the sum within the budget. Solved greedily on
marginal gain per bit: every unit starts at its cheapest option, and upgrades along the lower
convex hull of its (bits, KL) options are taken in order of KL saved per bit while they fit.
That is the LP relaxation's optimum short of at most one unit per budget step, and runs in
O(U log U) for the ~10^4 features of a small model and the ~10^6 of a 7B one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from runtime.errors import InputError
from runtime.search.candidates import Candidate, moved_row_bits
from runtime.search.sensitivity import OpSensitivity, Sensitivity

Granularity = Literal["op", "channel"]


@dataclass(frozen=True)
class Budget:
    """What the searched ops may cost: stored bits (an average per weight, or a total in bytes), or a
    batch-1 decode latency on the accelerator (`latency_us`, converted to stored bytes by
    `runtime.search.latency.allocate_for_latency` with the profile's decode latency model)."""

    bits_per_weight: float | None = None
    total_bytes: int | None = None
    latency_us: float | None = None

    def __post_init__(self):
        given = {k: v for k, v in (("bits_per_weight", self.bits_per_weight), ("total_bytes", self.total_bytes),
                                   ("latency_us", self.latency_us)) if v is not None}
        if len(given) != 1:
            raise InputError("give exactly one of bits_per_weight, total_bytes and latency_us", loc=("budget",))
        (field_name, value), = given.items()
        if not value > 0:
            raise InputError(f"{field_name} must be positive, got {value}", loc=("budget", field_name))

    def total_bits(self, weights: int) -> float:
        if self.latency_us is not None:
            raise InputError("a latency budget is converted to bytes against an accelerator profile: use "
                             "search() or runtime.search.latency.allocate_for_latency", loc=("budget", "latency_us"))
        return self.bits_per_weight * weights if self.bits_per_weight is not None else 8.0 * self.total_bytes

    def label(self) -> str:
        if self.latency_us is not None:
            return f"{self.latency_us:g} µs decode latency"
        return (f"{self.bits_per_weight:g} bits/weight" if self.bits_per_weight is not None
                else f"{self.total_bytes:,} bytes")


@dataclass
class OpAllocation:
    """Which candidate each output feature of one op takes."""

    name: str
    in_features: int
    out_features: int
    choice: list[str]  # [out] candidate name per output feature

    def counts(self) -> dict[str, int]:
        names, counts = np.unique(np.array(self.choice), return_counts=True)
        return dict(zip(names.tolist(), counts.tolist()))

    def main(self) -> str:
        """The candidate most rows take: the op's main part, whose rows need no stored index."""
        counts = self.counts()
        return max(counts, key=lambda c: (counts[c], c))

    def rows(self, candidate: str) -> list[int]:
        return [j for j, c in enumerate(self.choice) if c == candidate]


@dataclass
class Allocation:
    granularity: Granularity
    ops: list[OpAllocation]
    budget: Budget
    budget_bits: float
    weights: int
    bits: float  # stored bits of the searched ops as the engine writes them, row indices included
    predicted_kl: float  # sum of the chosen units' sensitivities, nats per token
    upgrades: int  # greedy steps taken
    notes: list[str] = field(default_factory=list)
    # Batch-1 decode µs of the searched ops on the profile (runtime.search.latency); None without a latency model.
    predicted_latency_us: float | None = None

    @property
    def bits_per_weight(self) -> float:
        return self.bits / self.weights

    def op(self, name: str) -> OpAllocation:
        return next(o for o in self.ops if o.name == name)

    def weights_by_candidate(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.ops:
            for c, n in o.counts().items():
                out[c] = out.get(c, 0) + n * o.in_features
        return out

    def to_dict(self) -> dict:
        return {"granularity": self.granularity, "budget": self.budget.label(), "budget_bits": self.budget_bits,
                "weights": self.weights, "bits": self.bits, "bits_per_weight": self.bits_per_weight,
                "predicted_kl": self.predicted_kl, "predicted_latency_us": self.predicted_latency_us,
                "upgrades": self.upgrades,
                "weights_by_candidate": self.weights_by_candidate(),
                "ops": {o.name: o.counts() for o in self.ops}}


def stored_bits(op: OpAllocation, candidates: dict[str, Candidate]) -> int:
    """Bits the engine stores for one op's weights under an allocation (values, scales, row indices)."""
    counts = op.counts()
    bits = sum(n * candidates[c].row_bits(op.in_features) for c, n in counts.items())
    moved = op.out_features - counts[op.main()]
    return bits + moved * moved_row_bits(op.out_features)


def _hull(options: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Lower convex hull of (cost, loss, id) options, from the cheapest; dominated options dropped."""
    pts: list[tuple[float, float, int]] = []
    for c, l, i in sorted(options, key=lambda o: (o[0], o[1])):
        if pts and (c == pts[-1][0] or l >= pts[-1][1]):
            continue  # costs as much or more and saves nothing
        while len(pts) >= 2:
            (c0, l0, _), (c1, l1, _) = pts[-2], pts[-1]
            # pts[-1] leaves the hull when going straight to the new point saves more per bit.
            if (l0 - l1) * (c - c1) <= (l1 - l) * (c1 - c0):
                pts.pop()
            else:
                break
        pts.append((c, l, i))
    return pts


def _units(sens: OpSensitivity, candidates: dict[str, Candidate], granularity: Granularity, base: str | None):
    """(cost, loss, candidate) options for each unit of one op: the whole op, or each output feature."""
    names = sens.candidates
    row_bits = {c: candidates[c].row_bits(sens.in_features) for c in names}
    if granularity == "op":
        yield [(float(row_bits[c] * sens.out_features), sens.op[c], c) for c in names]
        return
    # A row that leaves its op's base format pays for its stored index (MixedLinear's rows_<i>).
    extra = moved_row_bits(sens.out_features)
    cost = {c: float(row_bits[c] + (0 if c == base else extra)) for c in names}
    losses = np.stack([sens.rows[c] for c in names])  # [C, out]
    for j in range(sens.out_features):
        yield [(cost[c], float(losses[k, j]), c) for k, c in enumerate(names)]


def _cheapest(sens: OpSensitivity, candidates: dict[str, Candidate]) -> str:
    """The cheapest candidate of an op (the lowest whole-op KL among equally cheap ones)."""
    return min(sens.candidates, key=lambda c: (candidates[c].row_bits(sens.in_features), sens.op[c]))


def _greedy(sens: Sensitivity, candidates, granularity: Granularity, bases: list[str | None], budget_bits: float):
    """(choice per op and row, predicted KL, steps taken), or None when even the cheapest start does not fit."""
    unit_op: list[int] = []
    unit_row: list[int] = []
    hulls: list[list[tuple[float, float, str]]] = []
    for k, op in enumerate(sens.ops):
        for j, options in enumerate(_units(op, candidates, granularity, bases[k])):
            unit_op.append(k)
            unit_row.append(j)
            hulls.append(_hull(options))
    start = sum(h[0][0] for h in hulls)
    if start > budget_bits:
        return None, start
    # Every hull step, best saving per bit first; a unit's steps are already in decreasing order.
    steps = [((h[s - 1][1] - h[s][1]) / (h[s][0] - h[s - 1][0]), u, s)
             for u, h in enumerate(hulls) for s in range(1, len(h))]
    steps.sort(key=lambda t: -t[0])
    level = [0] * len(hulls)
    remaining = budget_bits - start
    taken = 0
    for _, u, s in steps:
        if level[u] != s - 1:
            continue  # an earlier step of this unit did not fit
        dcost = hulls[u][s][0] - hulls[u][s - 1][0]
        if dcost <= remaining:
            level[u] = s
            remaining -= dcost
            taken += 1
    choice = [[""] * o.out_features for o in sens.ops]
    predicted = 0.0
    for u, h in enumerate(hulls):
        _, loss, cand = h[level[u]]
        predicted += loss
        if granularity == "op":
            choice[unit_op[u]] = [cand] * sens.ops[unit_op[u]].out_features
        else:
            choice[unit_op[u]][unit_row[u]] = cand
    return (choice, predicted, taken), start


def allocate(sens: Sensitivity, candidates: dict[str, Candidate], budget: Budget,
             granularity: Granularity = "channel") -> Allocation:
    """The allocation of candidates to units that minimises predicted KL within the budget.

    Per output feature, a row that leaves its op's base format pays for a stored index. The
    first pass takes each op's cheapest candidate as its base; where most of an op's rows end
    up elsewhere (int8 at a generous budget), a second pass re-bases the op there, so rows in the
    majority stop paying for an index they will not need, and is kept if it predicts less KL.
    """
    if granularity not in ("op", "channel"):
        raise InputError(f"granularity must be 'op' or 'channel', got {granularity!r}", loc=("granularity",))
    weights = sum(o.in_features * o.out_features for o in sens.ops)
    budget_bits = budget.total_bits(weights)
    bases = [_cheapest(o, candidates) if granularity == "channel" else None for o in sens.ops]
    found, start = _greedy(sens, candidates, granularity, bases, budget_bits)
    if found is None:
        raise InputError(f"budget {budget.label()} ({budget_bits / weights:.3f} bits/weight) is below the cheapest "
                         f"allocation of these candidates ({start / weights:.3f} bits/weight)", loc=("budget",))
    notes = []
    if granularity == "channel":
        first = [OpAllocation(o.name, o.in_features, o.out_features, found[0][k]) for k, o in enumerate(sens.ops)]
        rebased = [a.main() for a in first]
        if rebased != bases:
            second, _ = _greedy(sens, candidates, granularity, rebased, budget_bits)
            if second is not None and second[1] < found[1]:
                notes.append(f"re-based {sum(a != b for a, b in zip(rebased, bases))} ops on their majority format")
                found = second
    choice, predicted, taken = found
    ops = [OpAllocation(o.name, o.in_features, o.out_features, choice[k]) for k, o in enumerate(sens.ops)]
    bits = float(sum(stored_bits(o, candidates) for o in ops))
    # Stored bits can only be below the greedy's account: the main part is the largest, not the base.
    assert bits <= budget_bits + 1e-6, (bits, budget_bits)
    return Allocation(granularity=granularity, ops=ops, budget=budget, budget_bits=budget_bits, weights=weights,
                      bits=bits, predicted_kl=predicted, upgrades=taken, notes=notes)
