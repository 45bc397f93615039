"""The decode-attention function the runtime installs on GPUs: same answers as transformers' SDPA."""
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, StaticCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import runtime.modules.attention as attention_mod
from runtime.modules.attention import decode_attention_forward, use_decode_kernel


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("batch, hq, hkv, length", [(1, 8, 2, 37), (3, 4, 4, 5), (2, 6, 3, 1)])
def test_one_token_step_matches_sdpa(batch, hq, hkv, length):
    torch.manual_seed(0)
    q = torch.randn(batch, hq, 1, 16, dtype=torch.bfloat16)
    k = (torch.randn(batch, hkv, length, 16) * 2).bfloat16()
    v = torch.randn(batch, hkv, length, 16, dtype=torch.bfloat16)
    kwargs = {"cache_position": torch.tensor([length - 1])}
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = hq // hkv, True
    got, _ = decode_attention_forward(module, q, k, v, None, scaling=0.25, **kwargs)
    want, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.25, **kwargs)
    assert got.shape == want.shape == (batch, 1, hq, 16)
    assert _rel(got, want) < 1e-2


def test_position_ids_alone_give_the_lengths():
    # transformers 5.2x passes position_ids and no cache_position: the kernel reads up to the
    # position each sequence's RoPE was computed for.
    torch.manual_seed(6)
    q, k, v = (torch.randn(*shape, dtype=torch.bfloat16) for shape in [(2, 4, 1, 8), (2, 2, 9, 8), (2, 2, 9, 8)])
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    got, _ = decode_attention_forward(module, q, k, v, None, scaling=0.3, position_ids=torch.tensor([[5], [5]]))
    want, _ = decode_attention_forward(module, q, k, v, None, scaling=0.3, cache_position=torch.tensor([5]))
    assert torch.equal(got, want)
    assert _rel(got, sdpa_attention_forward(module, q, k[:, :, :6], v[:, :, :6], None, scaling=0.3)[0]) < 1e-2


def test_a_static_cache_attends_only_to_filled_positions():
    # A static cache is longer than the sequence; the positions past cache_position are not read.
    torch.manual_seed(1)
    q, k, v = (torch.randn(*shape, dtype=torch.bfloat16) for shape in [(1, 4, 1, 8), (1, 2, 12, 8), (1, 2, 12, 8)])
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    got, _ = decode_attention_forward(module, q, k, v, None, scaling=0.3, cache_position=torch.tensor([6]))
    k[:, :, 7:] = float("nan")
    v[:, :, 7:] = float("nan")
    again, _ = decode_attention_forward(module, q, k, v, None, scaling=0.3, cache_position=torch.tensor([6]))
    want, _ = sdpa_attention_forward(module, q, k[:, :, :7], v[:, :, :7], None, scaling=0.3)
    assert torch.equal(got, again) and _rel(got, want) < 1e-2


def test_a_model_generates_the_same_logits_with_it():
    torch.manual_seed(2)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, 97, (1, 9))

    def decode_logits():
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids[:, :8], past_key_values=cache, use_cache=True)
            return model(input_ids=ids[:, 8:], past_key_values=cache, use_cache=True).logits

    want = decode_logits()
    use_decode_kernel(model)
    got = decode_logits()
    assert model.config._attn_implementation == "precisionops_decode"
    assert _rel(got, want) < 2e-2


def test_fp32_and_prefill_steps_stay_on_sdpa():
    torch.manual_seed(3)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    q, k, v = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    got, _ = decode_attention_forward(module, q, k, v, None, scaling=0.3, cache_position=torch.tensor([4]))
    assert torch.equal(got, sdpa_attention_forward(module, q, k, v, None, scaling=0.3)[0])


def _tiny_llama(seed: int, device: str = "cpu", head_dim: int = 8):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=8 * head_dim, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).to(device=device, dtype=torch.bfloat16).eval()


def _static_decode(model, ids, prompt: int):
    """Prefill ``prompt`` tokens into a static cache, then decode the rest one at a time; returns
    the decode steps' logits and the cache."""
    cache = StaticCache(config=model.config, max_cache_len=32)
    with torch.no_grad():
        model(input_ids=ids[:, :prompt], past_key_values=cache, use_cache=True)
        steps = [model(input_ids=ids[:, i:i + 1], past_key_values=cache, use_cache=True).logits
                 for i in range(prompt, ids.shape[1])]
    return torch.cat(steps, dim=1), cache


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_static_cache_decode_steps_take_the_fused_step(monkeypatch, device):
    # RoPE, the cache write and attention as one op (on CUDA the Triton kernel, head dim 16): the
    # logits, the cache's contents and its fill count are transformers' own.
    model = _tiny_llama(4, device, head_dim=8 if device == "cpu" else 16)
    ids = torch.randint(0, 97, (1, 13), device=device)
    want, want_cache = _static_decode(model, ids, 8)
    calls, op = [], attention_mod.decode_attention_update_op

    def counted(*args):
        calls.append(args[7])
        return op(*args)

    monkeypatch.setattr(attention_mod, "decode_attention_update_op", counted)
    assert use_decode_kernel(model) == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    got, got_cache = _static_decode(model, ids, 8)
    # Five steps of two layers each, at positions 8..12; the prefill took transformers' path.
    assert [int(p) for p in calls] == [p for p in range(8, 13) for _ in range(2)]
    assert _rel(got, want) < 2e-2
    for mine, theirs in zip(got_cache.layers, want_cache.layers):
        assert int(mine.cumulative_length) == int(theirs.cumulative_length) == 13
        assert _rel(mine.keys[:, :, :13], theirs.keys[:, :, :13]) < 1e-2
        assert _rel(mine.values[:, :, :13], theirs.values[:, :, :13]) < 1e-2
        assert not mine.keys[:, :, 13:].any()
    # The first layer's values are its own projections, bit for bit (later layers' inputs differ
    # by the rounding of RoPE computed in fp32).
    assert torch.equal(got_cache.layers[0].values, want_cache.layers[0].values)


def test_fused_step_leaves_other_steps_to_transformers():
    # A dynamic cache, a prefill, or two masked sequences: fused_step declines.
    model = _tiny_llama(5)
    attn = model.model.layers[0].self_attn
    hidden = torch.randn(2, 1, 64, dtype=torch.bfloat16)
    cos = sin = torch.ones(2, 1, 8, dtype=torch.bfloat16)  # head dim 64 / 8
    static = StaticCache(config=model.config, max_cache_len=16)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 97, (2, 3)), past_key_values=static, use_cache=True)
    positions = torch.tensor([3])
    assert attention_mod.fused_step(attn, hidden, (cos, sin), None, DynamicCache(config=model.config),
                                    positions) is None
    assert attention_mod.fused_step(attn, torch.randn(2, 3, 64, dtype=torch.bfloat16), (cos, sin), None, static,
                                    positions) is None
    assert attention_mod.fused_step(attn, hidden, (cos, sin), torch.ones(2, 1, 1, 4, dtype=torch.bool), static,
                                    positions) is None
    with torch.no_grad():
        assert attention_mod.fused_step(attn, hidden, (cos, sin), None, static, positions).shape == (2, 1, 64)
        # One row of RoPE factors for the batch (position ids [1, 1]) is every sequence's.
        angles = torch.rand(1, 1, 4) * 6
        one = (torch.cat([angles.cos()] * 2, -1).bfloat16(), torch.cat([angles.sin()] * 2, -1).bfloat16())
        shared = attention_mod.fused_step(attn, hidden, one, None, static, positions)
        each = attention_mod.fused_step(attn, hidden, tuple(t.expand(2, 1, 8).clone() for t in one), None, static,
                                        positions)
        assert torch.equal(shared, each)
