"""Canary samples: KL, top-1, saturation and amax ratio of engines against their reference, checked independently."""
from __future__ import annotations

import pytest
import torch

from runtime.serving import ReferencePool, ShadowJob, ShadowWorker, Slot, measure
from runtime.serving.shadow import request_slice

NARROW_CALIBRATION = 50.0  # conftest divides the fp8_narrow engine's calibrated ranges by this


def _random_tokens(engine, n: int) -> list[int]:
    """Fresh random token ids (no special tokens), a sequence the engine has never been calibrated on."""
    return torch.randint(3, len(engine.tokenizer), (n,)).tolist()


def _sample(engine, tokens):
    pool = ReferencePool()
    return measure(pool.get(engine).logits(tokens), engine, tokens)


def _kl_float64(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    p = torch.log_softmax(ref_logits.double(), -1)
    q = torch.log_softmax(cand_logits.double(), -1)
    return (p.exp() * (p - q)).sum(-1)


def test_fp8_engine_differs_from_reference(load_engine_dir):
    engine = load_engine_dir("fp8")
    tokens = _random_tokens(engine, 48)
    m = _sample(engine, tokens)
    assert m["kl_mean"] > 1e-5 and m["kl_max"] >= m["kl_mean"]
    assert 0.0 < m["top1_agreement"] <= 1.0
    # Dynamic per-token scales never clip; every quantized op's input is reported (2 layers x 7 projections;
    # the LM head stays wide), none saturated.
    assert set(m["saturation"]) == engine.quantized_inputs and len(m["saturation"]) == 14
    assert all(v == 0.0 for v in m["saturation"].values())
    assert m["amax_ratio"] == {}  # no calibration, no calibrated ranges


def test_kl_and_top1_match_an_independent_float64_computation(load_engine_dir):
    # KL is computed in fp32, as offline evaluation does (the same number for the same thing); the narrow engine's
    # KL is large enough that fp32 rounding of log-probabilities stays far below the tolerance.
    engine = load_engine_dir("fp8_narrow")
    tokens = _random_tokens(engine, 40)
    reference = ReferencePool().get(engine)
    ref_logits = reference.logits(tokens)
    m = measure(ref_logits, engine, tokens)
    with torch.inference_mode():
        cand_logits = engine.model(input_ids=torch.tensor([tokens])).logits[0]
    kl = _kl_float64(ref_logits, cand_logits)
    assert abs(m["kl_mean"] - float(kl.mean())) / float(kl.mean()) < 1e-4
    assert abs(m["kl_max"] - float(kl.max())) / float(kl.max()) < 1e-4
    agree = (ref_logits.argmax(-1) == cand_logits.argmax(-1)).double().mean()
    assert m["top1_agreement"] == pytest.approx(float(agree))


def test_bf16_engine_is_close_to_reference(load_engine_dir):
    engine = load_engine_dir("bf16")
    fp8 = load_engine_dir("fp8")
    tokens = _random_tokens(engine, 48)
    bf16, fp8_m = _sample(engine, tokens), _sample(fp8, tokens)
    assert bf16["kl_mean"] < 1e-4 and bf16["kl_max"] < 1e-3
    assert bf16["kl_mean"] < fp8_m["kl_mean"] / 10  # bf16 weights lose far less than fp8 weights and activations
    assert bf16["top1_agreement"] >= 0.97
    assert bf16["saturation"] == {}  # nothing quantized at the inputs


def test_narrow_static_calibration_saturates(load_engine_dir):
    engine = load_engine_dir("fp8_narrow")
    tokens = _random_tokens(engine, 48)
    m = _sample(engine, tokens)
    assert max(m["saturation"].values()) > 0.01
    assert set(m["amax_ratio"]) == set(engine.calibrated_amax) and len(m["amax_ratio"]) >= 14
    # Traffic like the calibration corpus, ranges divided by 50: observed amax sits near 50x the calibrated one.
    ratios = sorted(m["amax_ratio"].values())
    assert ratios[len(ratios) // 2] > NARROW_CALIBRATION / 4
    assert m["kl_mean"] > _sample(load_engine_dir("fp8"), tokens)["kl_mean"]


def test_saturation_matches_a_count_of_clipped_inputs(load_engine_dir):
    """The share reported per op equals |x / scale| > 448 counted independently at that op's input."""
    engine = load_engine_dir("fp8_narrow")
    tokens = _random_tokens(engine, 32)
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [op.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, []).append(args[0]))
             for name, op in engine.quant_ops.items()]
    try:
        m = _sample(engine, tokens)
    finally:
        for h in hooks:
            h.remove()
    assert engine.quantized_inputs
    for name in engine.quantized_inputs:
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[name]]).double()
        expected = float((x.abs() / engine.quant_ops[name].input_scale.double() > 448.0).double().mean())
        assert m["saturation"][name] == pytest.approx(expected, abs=1e-9), name
    for name, calibrated in engine.calibrated_amax.items():
        observed_amax = float(torch.cat([t.reshape(-1) for t in seen[name]]).abs().max())
        assert m["amax_ratio"][name] == pytest.approx(observed_amax / calibrated, rel=1e-5), name


def test_observe_is_switched_off_after_a_sample(load_engine_dir):
    engine = load_engine_dir("fp8_narrow")
    _sample(engine, _random_tokens(engine, 8))
    assert not any(op.observe for op in engine.quant_ops.values())
    assert not engine.lock.locked()


def test_request_slice_tags_length_bucket_and_script():
    assert request_slice("The quick brown fox", 12) == ("0-128", "Latin", "Latin/0-128")
    assert request_slice("Быстрая коричневая лиса", 700) == ("512-2048", "Cyrillic", "Cyrillic/512-2048")
    assert request_slice("anything", 3, "support-tickets")[2] == "support-tickets"


def test_worker_measures_each_target_once_against_one_reference(load_engine_dir):
    fp8, narrow = load_engine_dir("fp8", registry_id=3), load_engine_dir("fp8_narrow", registry_id=4)
    tokens = _random_tokens(fp8, 20)
    samples = []
    worker = ShadowWorker(ReferencePool(), samples.append, queue_size=4)
    out = worker.process(ShadowJob("req-1", tuple(tokens), "a prompt", (("active", Slot(fp8, 11)),
                                                                       ("shadow", Slot(narrow, 12)))))
    assert [(s.role, s.deployment_id, s.registry_id) for s in out] == [("active", 11, 3), ("shadow", 12, 4)]
    assert len(worker.references._models) == 1  # both engines share the reference model
    payload = out[1].payload()
    assert payload["engine_id"] == 4 and payload["request_id"] == "req-1" and payload["num_tokens"] == 20
    assert payload["length_bucket"] == "0-128" and payload["script"] == "Latin"
