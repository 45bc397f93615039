"""Turning an allocation into an ordinary recipe, with the measured reason on every rule."""
from __future__ import annotations

import numpy as np

from runtime.recipes import Ignore, Recipe, Rule
from runtime.recipes.schema import ChannelRule
from runtime.search.allocation import Allocation
from runtime.search.candidates import Candidate
from runtime.search.sensitivity import Sensitivity


def _drop_format(sens_op, candidates: dict[str, Candidate]) -> str:
    """The candidate a unit "drops to": the op's cheapest one (its sensitivity is what ranks units)."""
    return min(sens_op.candidates, key=lambda c: (candidates[c].row_bits(sens_op.in_features), sens_op.op[c]))


def _ranks(values: np.ndarray) -> np.ndarray:
    """1 for the largest value."""
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def emit_recipe(allocation: Allocation, sens: Sensitivity, candidates: dict[str, Candidate], *, name: str,
                model: str | None = None) -> Recipe:
    """A recipe that gives every op and output feature its allocated candidate.

    The default is the candidate holding the most weights; an op whose features all take it has
    no rule; an op kept wide as a whole is an `ignore` entry; every other op gets a rule naming it,
    with `output_channels` for the features that leave the op's main format.
    """
    by_weights = allocation.weights_by_candidate()
    default = max(by_weights, key=lambda c: (by_weights[c], c))
    drop = {o.name: _drop_format(o, candidates) for o in sens.ops}
    op_drop = np.array([o.op[drop[o.name]] for o in sens.ops])
    op_rank = dict(zip((o.name for o in sens.ops), _ranks(op_drop)))
    n_ops = len(sens.ops)
    # Global ranks of output features by their own drop sensitivity (the per-feature search's units).
    offsets, flat = {}, []
    for o in sens.ops:
        offsets[o.name] = sum(len(f) for f in flat)
        flat.append(o.rows[drop[o.name]])
    row_rank = _ranks(np.concatenate(flat)) if flat else np.array([], dtype=np.int64)
    n_rows = len(row_rank)

    rules: list[Rule] = []
    ignore: list[Ignore] = []
    for alloc in allocation.ops:
        s = sens.op(alloc.name)
        d = drop[alloc.name]
        main = alloc.main()
        cand = candidates[main]
        others = [c for c in alloc.counts() if c != main]
        head = (f"sensitivity {s.op[d]:.1e} nats/token at {d} (rank {op_rank[alloc.name]} of {n_ops} ops)")
        if not others and main == default and not s.is_lm_head:  # the logits op ignores the default
            continue
        if not others and cand.is_wide:
            ignore.append(Ignore(target=alloc.name, reason=f"{head}; kept wide: the greedy found no cheaper "
                                                            f"format worth its KL within the budget"))
            continue
        overrides = []
        for c in sorted(others, key=lambda c: candidates[c].row_bits(alloc.in_features)):
            rows = alloc.rows(c)
            r = row_rank[offsets[alloc.name] + np.array(rows)]
            vals = s.rows[d][rows]
            overrides.append(ChannelRule(
                channels=rows, weights=candidates[c].weights, input_activations=candidates[c].input_activations,
                reason=(f"{len(rows)} output features with sensitivity {vals.min():.1e}..{vals.max():.1e} at {d} "
                        f"(ranks {int(r.min())}..{int(r.max())} of {n_rows} features): {c} lowers their KL "
                        f"from {s.rows[d][rows].sum():.1e} to {s.rows[c][rows].sum():.1e}")))
        if others:
            why = f"{head}; {alloc.counts()[main]} of {alloc.out_features} output features in {main}"
        else:
            why = f"{head}; {main} lowers it to {s.op[main]:.1e} at {cand.bits_per_weight(alloc.in_features):.2f} bits/weight"
        rules.append(Rule(targets=[alloc.name], weights=cand.weights, input_activations=cand.input_activations,
                          reason=why, output_channels=overrides))
    description = (f"searched per {allocation.granularity} for {allocation.budget.label()}: "
                   f"{allocation.bits_per_weight:.3f} bits/weight over {len(allocation.ops)} ops, predicted KL "
                   f"{allocation.predicted_kl:.2e} nats/token; sensitivity on corpus {sens.corpus_hash[:19]} "
                   f"({sens.tokens} tokens, Fisher proxy, measure={sens.measure})")
    return Recipe(name=name, description=description, model=model,
                  default=candidates[default].scheme(), rules=rules, ignore=ignore)
