"""Every kernel the GPU runs compiles for sm_90, in every autotune config: on the CPU, without a GPU.

The other kernel tests run under Triton's interpreter, which compiles nothing: inline assembly,
the bf16 paths and all but one autotune config would first be built on a GPU. bench/sm90_compile.py
records the launches of every kernel path on CPU tensors and compiles each for an sm_90 target.
"""
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
