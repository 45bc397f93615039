"""Latency budgets: what an allocation costs at batch-1 decode on a profile, and the byte budget that meets a target.

Decode reads every weight once per token, so its time is weight-read bound: the profile's
`DecodeLatency` gives each GEMM a fixed cost plus its stored bytes over its kernel's effective
bandwidth. A mixed (per-output-feature) op runs one GEMM per part and scatters each part's
columns into one output, so moving rows out of an op's main format costs a second GEMM's fixed
cost on top of their bytes; sibling ops the runtime fuses (q/k/v, gate/up, whole in one format)
cost one GEMM's. The allocation itself stays a knapsack over stored bits; a latency
target is met by the largest byte budget whose allocation the model predicts within it, found by
bisection (feasible sets grow with the target and the bisection's midpoints do not depend on it,
so a looser target never gets a smaller byte budget), or by every op whole in its fastest format
when that predicts less KL (latency is not monotone in bytes); the lower predicted KL wins.
"""
from __future__ import annotations

import math
from dataclasses import replace

from runtime.accelerators import AcceleratorProfile
from runtime.accelerators.profiles import DecodeLatency
from runtime.errors import InputError
from runtime.models import sibling_names
from runtime.search.allocation import Allocation, Budget, Granularity, OpAllocation, allocate, stored_bits
from runtime.search.candidates import Candidate, moved_row_bits
from runtime.search.sensitivity import Sensitivity

LOC = ("budget", "latency_us")
_REL_TOL = 1e-4  # bisection stops when the byte interval is this small relative to its lower end


def decode_model(profile: AcceleratorProfile) -> DecodeLatency:
    """The profile's decode latency model, or an InputError naming the latency budget."""
    if profile.latency is None:
        raise InputError(f"accelerator {profile.name!r} has no decode latency model, so a latency budget cannot be "
                         "converted; give bits_per_weight or total_bytes instead", loc=LOC)
    return profile.latency


def kernel_of(candidate: Candidate, profile: AcceleratorProfile) -> tuple[str, bool]:
    """(kernel the profile runs the candidate with, whether it quantizes activations first)."""
    weight = None if candidate.weights.is_wide else candidate.weights.format
    activation = candidate.input_activations.format if candidate.input_activations is not None else None
    return profile.kernel(weight, activation), activation is not None


def part_us(model: DecodeLatency, profile: AcceleratorProfile, candidate: Candidate, *, rows: int,
            in_features: int) -> float:
    """µs of one GEMM over `rows` output rows of an op in one candidate format, at batch 1."""
    kernel, act_quant = kernel_of(candidate, profile)
    stored = rows * candidate.row_bits(in_features) / 8
    return model.gemm(kernel, stored_bytes=stored, weights=rows * in_features, act_quant=act_quant)


def op_us(op: OpAllocation, candidates: dict[str, Candidate], profile: AcceleratorProfile) -> float:
    """µs of one op under an allocation: one GEMM per format it holds, plus a scatter per part when mixed."""
    model = decode_model(profile)
    counts = op.counts()
    us = sum(part_us(model, profile, candidates[c], rows=n, in_features=op.in_features) for c, n in counts.items())
    if len(counts) > 1:
        moved = op.out_features - counts[op.main()]
        # Each part writes its columns into the output; the moved rows' stored index is read too.
        us += len(counts) * model.scatter_us + moved * moved_row_bits(op.out_features) / 8 / (model.copy_gbps * 1e3)
    return us


def predict_us(allocation: Allocation, candidates: dict[str, Candidate], profile: AcceleratorProfile) -> float:
    """Predicted batch-1 decode µs of every searched op under an allocation."""
    return _ops_us(allocation.ops, candidates, profile)


def _ops_us(ops: list[OpAllocation], candidates: dict[str, Candidate], profile: AcceleratorProfile) -> float:
    """µs of `ops` together. Sibling ops (q/k/v, gate/up) held whole in one format are one GEMM, as the runtime
    runs them on a GPU (runtime.modules.fused_linear)."""
    model = decode_model(profile)
    by_name = {o.name: o for o in ops}
    us, fused = 0.0, set()
    for group in sibling_names(by_name):
        members = [by_name[n] for n in group]
        formats = {c for o in members for c in o.counts()}
        if len(formats) == 1 and len({o.in_features for o in members}) == 1:
            us += part_us(model, profile, candidates[formats.pop()], rows=sum(o.out_features for o in members),
                          in_features=members[0].in_features)
            fused.update(group)
    return us + sum(op_us(o, candidates, profile) for o in ops if o.name not in fused)


def per_weight_us(candidate: Candidate, profile: AcceleratorProfile, in_features: int) -> float:
    """µs per weight of a large op in this format (fixed costs amortised away): how fast a format reads."""
    rows = 1 << 16
    model = decode_model(profile)
    kernel, act_quant = kernel_of(candidate, profile)
    stored = rows * candidate.row_bits(in_features) / 8
    return (model.gemm(kernel, stored_bytes=stored, weights=rows * in_features, act_quant=act_quant)
            - model.gemm(kernel, stored_bytes=0.0, weights=0, act_quant=act_quant)) / (rows * in_features)


def slower_than_wide(candidates: list[Candidate], profile: AcceleratorProfile, in_features: int,
                     wide: Candidate) -> dict[str, str]:
    """Candidates that read slower than keep-wide at decode: under a latency budget they are dominated
    (slower and less exact than bf16), e.g. weight-only int8 on an H100, which dequantizes first."""
    base = per_weight_us(wide, profile, in_features)
    out = {}
    for c in candidates:
        if c.is_wide:
            continue
        t = per_weight_us(c, profile, in_features)
        if t >= base:
            kernel, _ = kernel_of(c, profile)
            out[c.name] = (f"slower than keep-wide at batch-1 decode on {profile.name} ({kernel}: "
                           f"{t * 1e6:.2f} vs {base * 1e6:.2f} µs per million weights), so a latency budget never "
                           f"gains from it")
    return out


def _fastest(model: DecodeLatency, profile: AcceleratorProfile, cands: list[Candidate], k: int, n: int) -> Candidate:
    """The candidate an [n, k] op runs fastest in, whole (fewer stored bits break ties)."""
    return min(cands, key=lambda c: (part_us(model, profile, c, rows=n, in_features=k), c.row_bits(k)))


def floor_us(shapes: dict[str, tuple[int, int]], per_op: dict[str, list[Candidate]],
             profile: AcceleratorProfile) -> float:
    """Predicted µs of every op whole in its fastest format (mixing only adds GEMMs): the lowest a latency
    target can go. Needs only the op shapes."""
    model = decode_model(profile)
    ops, candidates = [], {}
    for name, cands in per_op.items():
        k, n = shapes[name]
        fastest = _fastest(model, profile, cands, k, n)
        candidates[fastest.name] = fastest
        ops.append(OpAllocation(name, k, n, [fastest.name] * n))
    return _ops_us(ops, candidates, profile)


def _fastest_allocation(sens: Sensitivity, candidates: dict[str, Candidate], budget: Budget,
                        granularity: Granularity, profile: AcceleratorProfile) -> Allocation:
    """Every op whole in its fastest candidate, accounted as `allocate` accounts its results."""
    model = decode_model(profile)
    ops, predicted = [], 0.0
    for o in sens.ops:
        c = _fastest(model, profile, [candidates[n] for n in o.candidates], o.in_features, o.out_features).name
        ops.append(OpAllocation(o.name, o.in_features, o.out_features, [c] * o.out_features))
        predicted += o.op[c] if granularity == "op" else float(o.rows[c].sum())
    weights = sum(o.in_features * o.out_features for o in sens.ops)
    bits = float(sum(stored_bits(o, candidates) for o in ops))
    return Allocation(granularity=granularity, ops=ops, budget=budget, budget_bits=bits, weights=weights, bits=bits,
                      predicted_kl=predicted, upgrades=0, notes=["every op whole in its fastest format"])


def allocate_for_latency(sens: Sensitivity, candidates: dict[str, Candidate], budget: Budget,
                         granularity: Granularity, profile: AcceleratorProfile) -> Allocation:
    """The allocation of the largest byte budget whose predicted batch-1 decode latency meets `budget.latency_us`.

    Args:
        sens: the searched ops' sensitivities.
        candidates: name -> candidate, as `allocate` takes them.
        budget: a `Budget(latency_us=...)`: µs per decoded token for the searched ops together.
        granularity: "op" or "channel", as `allocate`.
        profile: the accelerator whose `latency` model predicts the time.

    Raises InputError naming `budget.latency_us` when no allocation tried fits (the message gives
    the floor: the fastest of them), or when the profile has no latency model.
    """
    if budget.latency_us is None:
        raise InputError("allocate_for_latency needs a latency budget", loc=LOC)
    decode_model(profile)
    target = budget.latency_us
    lo = math.ceil(sum(min(candidates[c].row_bits(o.in_features) for c in o.candidates) * o.out_features
                       for o in sens.ops) / 8)
    # Everything in its widest format, plus a row index for every row: no allocation stores more.
    hi = math.ceil(sum((max(candidates[c].row_bits(o.in_features) for c in o.candidates)
                        + moved_row_bits(o.out_features)) * o.out_features for o in sens.ops) / 8)

    def attempt(total_bytes: int) -> tuple[Allocation, float]:
        allocation = allocate(sens, candidates, Budget(total_bytes=total_bytes), granularity)
        return allocation, predict_us(allocation, candidates, profile)

    found: list[tuple[Allocation, float]] = []  # feasible allocations; the least predicted KL wins
    steps = 0
    widest, widest_us = attempt(hi)
    if widest_us <= target:
        found.append((widest, widest_us))
    else:
        cheapest, cheapest_us = attempt(lo)
        if cheapest_us <= target:
            best = (cheapest, cheapest_us)
            while hi - lo > max(1, lo * _REL_TOL):
                mid = (lo + hi) // 2
                allocation, us = attempt(mid)
                steps += 1
                if us <= target:
                    lo, best = mid, (allocation, us)
                else:
                    hi = mid
            found.append(best)
    # Latency is not monotone in bytes (the int4 kernel reads slower than the fp8 one; every extra part
    # of a mixed op costs a GEMM): every op whole in its fastest format may fit where no byte budget does.
    fastest = _fastest_allocation(sens, candidates, budget, granularity, profile)
    fastest_us = predict_us(fastest, candidates, profile)
    if fastest_us <= target:
        found.append((fastest, fastest_us))
    if not found:
        floor = min(widest_us, fastest_us)
        raise InputError(f"latency budget {target:g} µs is below what the fastest allocation of these candidates "
                         f"takes on {profile.name}: {floor:.1f} µs per decoded token (the floor); raise latency_us "
                         f"to at least {math.ceil(floor * 10) / 10:g}", loc=LOC)
    best, best_us = min(found, key=lambda f: (f[0].predicted_kl, f[1]))
    note = (f"latency budget {target:g} µs on {profile.name} ({profile.latency.source}): stored-bytes budget "
            f"{best.budget_bits / 8:,.0f} bytes ({best.budget_bits / best.weights:.3f} bits/weight), "
            f"{steps} bisection steps; predicted {best_us:.1f} µs")
    return replace(best, budget=budget, notes=[*best.notes, note], predicted_latency_us=best_us)
