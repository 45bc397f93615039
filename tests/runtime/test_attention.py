"""The decode-attention function the runtime installs on GPUs: same answers as transformers' SDPA."""
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

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
