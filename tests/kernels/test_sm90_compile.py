"""Every kernel the GPU runs compiles for sm_90, in every autotune config: on the CPU, without a GPU.

The other kernel tests run under Triton's interpreter, which compiles nothing: inline assembly,
the bf16 paths and all but one autotune config would first be built on a GPU. bench/sm90_compile.py
records the launches of every kernel path on CPU tensors and compiles each for an sm_90 target.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARDS = 2  # CI's cores; the shards compile disjoint variants side by side


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    runs = [subprocess.Popen([sys.executable, "bench/sm90_compile.py", "--quick", "--shard", f"{i}/{SHARDS}"],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(SHARDS)]
    outputs = [run.communicate(timeout=540)[0] for run in runs]
    for run, output in zip(runs, outputs):
        assert run.returncode == 0, output[-6000:]
    compiled = [int(re.search(r"(\d+) kernel variants compiled for sm_90", o).group(1)) for o in outputs]
    assert sum(compiled) >= 100, compiled  # every config of every kernel, every dtype and path once


@pytest.mark.slow
def test_gemvs_let_the_next_kernel_launch_after_their_loop():
    """Under PDL the one-token GEMVs let their dependents launch once their loop is done (end to end
    int4 decode ran faster so: kernels._launch.gemv_early_dependents), and at their start, right
    after their wait, with EARLY_DEPENDENTS: checked in their sm_90 PTX."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "bench/sm90_compile.py", "--gemv-trigger"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    order = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(order) == {"_w4a16_gemv_kernel", "_w8a8_gemv_kernel"}
    for name, placements in order.items():
        late, early = placements["late"], placements["early"]
        for where in (late, early):
            assert len(where["wait"]) == 1 and len(where["launch"]) == 1, (name, where)
        assert late["wait"][0] < late["last_weight_load"], (name, late)
        assert late["launch"][0] > max(late["last_weight_load"], late["last_branch"]), (name, late)
        assert early["wait"][0] < early["launch"][0] < early["last_weight_load"], (name, early)


@pytest.mark.slow
def test_mma_operands_stay_in_their_lanes():
    """The mma.sync W4A16 kernel's inline-assembly MMAs read each operand's fragment from the lane
    that holds it, which Triton does not know: every operand must be one element a lane in
    Triton's default layout, with no conversion between lanes in the loop (under Triton 3.6 a
    tl.load's coalesced layout once moved them). Checked on every config's sm_90 TTGIR."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "bench/sm90_compile.py", "--mma-layout"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    configs = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(configs) >= 10
    for config in configs:
        assert config["ok"] and config["loop_conversions"] == 0, config
