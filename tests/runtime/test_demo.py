"""The README's demo chain on the reference model, at a small sample count."""
import pytest

from runtime.demo import demo_table, run_demo


@pytest.mark.slow
def test_demo_orders_recipes_by_bits_and_error(tmp_path):
    rows = {r["recipe"]: r for r in run_demo(home=tmp_path, max_samples=6, seq_len=64)}
    assert set(rows) == {"bf16", "fp8_w8a8", "int8_w8a8", "int4_w4a16_g128", "fp8_w8a8_static", "mixed_fp8_int4"}
    # The reference model's weights are bf16 already: the bf16 engine reproduces it.
    assert rows["bf16"]["kl_mean"] < 1e-6 and rows["bf16"]["top1_agreement"] == 1.0
    assert 0 < rows["int8_w8a8"]["kl_mean"] < rows["int4_w4a16_g128"]["kl_mean"]
    assert rows["mixed_fp8_int4"]["kl_mean"] < rows["int4_w4a16_g128"]["kl_mean"]
    b = {k: r["linear_weight_bytes"] for k, r in rows.items()}
    assert b["int4_w4a16_g128"] < b["mixed_fp8_int4"] < b["fp8_w8a8"] == b["int8_w8a8"] < b["bf16"]
    assert rows["fp8_w8a8_static"]["kv_bytes_per_token"] * 2 == rows["bf16"]["kv_bytes_per_token"]
    assert rows["fp8_w8a8"]["fallbacks_h100"] == 0 < rows["fp8_w8a8"]["fallbacks_a100"]
    assert (tmp_path / "demo-report.json").is_file() and (tmp_path / "calibration" / "calibration.json").is_file()
    assert demo_table(list(rows.values())).row_count == 6
