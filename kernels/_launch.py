"""Backend choice shared by every kernel: Triton on CUDA, the torch reference elsewhere.

Tests force the Triton path on the CPU by setting ``TRITON_INTERPRET=1`` before triton is
imported and passing ``backend="triton"``.
"""
import contextlib
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.runtime import driver
from triton.runtime.autotuner import Autotuner, Heuristics
from triton.runtime.jit import JITFunction

BACKENDS = ("auto", "triton", "reference")
# When True the autotuned kernels run the first config of their M bucket instead of timing all
# of them: GPU correctness tests set it to compile a fraction of the configs (bench/kernels.py
# checks every tuned config's output against a baseline instead).
ONE_CONFIG = False


# Read once: @triton.jit reads TRITON_INTERPRET when a kernel is decorated, so a change later means
# nothing (tests set it, then reload the kernel modules, this one first).
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return _INTERPRETING


def cdiv(a: int, b: int) -> int:
    """Ceiling division on the host: launchers call it on every launch, where ``triton.cdiv``
    (a constexpr function, ~3 µs a call) costs more than some kernels."""
    return -(-a // b)


def first_config_only(configs, named_args, **kwargs):
    """Autotune pruning: the first config alone under the interpreter or with ONE_CONFIG set."""
    return configs[: 1 if interpreting() or ONE_CONFIG else None]


@contextlib.contextmanager
def only_config(kernel, config: triton.Config):
    """Within the block the autotuned ``kernel`` runs ``config`` alone, untuned (sweeps and
    per-config tests); afterwards it has its own configs and tuned picks back."""
    saved = kernel.configs, kernel.cache
    kernel.configs, kernel.cache = [config], {}
    try:
        yield
    finally:
        kernel.configs, kernel.cache = saved


# Launching through Triton (kernel[grid](...)) costs ~50-70 µs of host time a call on the H100's
# host: the autotuner's key, binding and specializing every argument, then the launcher's ~15. At
# decode and small prefill shapes that exceeds the kernel, so eager serving leaves the GPU idle
# (bench/launch_overhead.py). Once a call has been tuned and compiled, :func:`launch` keeps the
# compiled kernel under a key that holds everything Triton would choose it by (the tuning key's
# values; dtypes, 16-byte alignment of pointers, integers equal to 1, divisible by 16 and their
# width, as Triton specializes; the constexprs; the device) and later calls with the same key
# launch it directly, as Triton's own cache hit does. Triton's own options changed after the
# first call (TRITON_DEBUG, say) are not seen; PRECISIONOPS_FAST_LAUNCH=0 turns the direct path off.
class _Launch(NamedTuple):
    compiled: object
    meta: dict  # constexprs, tuned config and heuristics: what grid functions and pre-hooks read
    tail: tuple  # the kernel's parameters after the positional arguments, in signature order
    pre_hook: object
    # The autotuner's configs and cache objects when it tuned: replacing either (only_config, a
    # test's monkeypatch) sends the next call through Triton again.
    tuner: tuple | None


_launches: dict[tuple, _Launch] = {}
_tuning_positions: dict[object, tuple[int, ...]] = {}
_HASHABLE = (bool, int, float, str, torch.dtype, type(None))


def specialization(value) -> tuple:
    """What Triton specializes a launch argument on, or finer: a compiled kernel serves every call
    whose arguments agree on these (tests check it against Triton's own specializer)."""
    if isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return bool, value
    if isinstance(value, int):
        return int, value == 1, value % 16 == 0, -(1 << 31) <= value < 1 << 31, -(1 << 63) <= value < 1 << 63
    return (type(value),)


def launch_key(kernel, args: tuple, constexprs: dict):
    """The key :func:`launch` keeps a compiled kernel under; None where a call cannot take the
    direct path (a keyword argument that is not a plain value)."""
    positions = _tuning_positions.get(kernel)
    if positions is None:
        keys = kernel.keys if isinstance(kernel, Autotuner) else ()
        positions = _tuning_positions[kernel] = tuple(kernel.arg_names.index(k) for k in keys)
    for v in constexprs.values():
        if not isinstance(v, _HASHABLE):
            return None
    return (kernel, driver.active.get_current_device(), tuple(constexprs.items()),
            tuple(args[i] for i in positions if i < len(args)), tuple(map(specialization, args)))


def _direct(kernel, compiled, args: tuple, constexprs: dict) -> _Launch | None:
    """What a direct launch of ``compiled`` needs, from the call that compiled it."""
    meta = dict(constexprs)
    pre_hook = tuner = None
    fn = kernel
    while not isinstance(fn, JITFunction):
        if isinstance(fn, Autotuner):
            meta.update(fn.best_config.all_kwargs())
            pre_hook, tuner = fn.best_config.pre_hook, (fn.configs, fn.cache)
        elif isinstance(fn, Heuristics):
            # A heuristic may read only the tuning key's arguments, which the key holds by value.
            tuned = {kernel.arg_names[i]: args[i] for i in _tuning_positions[kernel] if i < len(args)}
            try:
                for name, heuristic in fn.values.items():
                    meta[name] = heuristic({**tuned, **meta})
            except KeyError:
                return None
        else:
            return None
        fn = fn.fn
    names = fn.arg_names[len(args):]
    if not hasattr(compiled, "packed_metadata") or any(name not in meta for name in names):
        return None
    return _Launch(compiled, meta, tuple(meta[name] for name in names), pre_hook, tuner)


def launch(kernel, grid, *args, **constexprs):
    """``kernel[grid](*args, **constexprs)``: the runtime arguments positional, in signature order,
    the constexprs and launch options by keyword. The first call of a key goes through Triton (and
    tunes); later ones launch its compiled kernel directly. Grid functions may read only the
    constexprs and the tuned config's values."""
    if (interpreting() or not getattr(args[0], "is_cuda", False) or _launch_hooks()
            or os.environ.get("PRECISIONOPS_FAST_LAUNCH", "1") == "0"):
        return kernel[grid](*args, **constexprs)
    key = launch_key(kernel, args, constexprs)
    entry = _launches.get(key) if key is not None else None
    if entry is None or entry.tuner is not None and (entry.tuner[0] is not kernel.configs
                                                     or entry.tuner[1] is not kernel.cache):
        compiled = kernel[grid](*args, **constexprs)
        entry = _direct(kernel, compiled, args, constexprs) if key is not None else None
        if entry is not None:
            _launches[key] = entry
        return compiled
    if entry.pre_hook is not None:
        entry.pre_hook({**dict(zip(kernel.arg_names, args)), **entry.meta})
    grid = grid(entry.meta) if callable(grid) else grid
    # As Triton's launch after its cache hit (JITFunction.run), with no launch hooks to call.
    compiled = entry.compiled
    compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1,
                 driver.active.get_current_stream(key[1]), compiled.function, compiled.packed_metadata, None, None,
                 None, *args, *entry.tail)
    return compiled


def _launch_hooks() -> bool:
    """Whether launch hooks (a profiler's) are set: calls then take Triton's own path, which runs them."""
    hooks = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    return any(getattr(hook, "calls", hook) for hook in hooks)  # an empty HookChain (Triton 3.9) calls none


_DEVICE_PROPERTIES: dict[int, object] = {}


def device_properties(device: torch.device | None = None):
    """``torch.cuda.get_device_properties`` of a CUDA device (the current one by default), looked
    up once per device: launchers ask on every call."""
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    if index not in _DEVICE_PROPERTIES:
        _DEVICE_PROPERTIES[index] = torch.cuda.get_device_properties(index)
    return _DEVICE_PROPERTIES[index]


# Programmatic dependent launch (sm_90+): a kernel launched with it may start while the kernel
# before it in the stream still runs, so its launch latency and prologue overlap that kernel's
# tail. A decode step is ~120 launches of a few µs each, where that latency is a large share.
# Every kernel here waits for the prior grid (wait_prior_grid) before it touches memory that
# another kernel writes, so it is safe after any kernel, with PDL or without. PRECISIONOPS_PDL=0
# turns it off.
def pdl_args(device: torch.device) -> dict:
    """Launch arguments for a kernel with a ``PDL`` constexpr on ``device``: PDL on for CUDA
    devices of compute capability 9.0 and up unless ``PRECISIONOPS_PDL=0``; off elsewhere."""
    if device.type != "cuda" or interpreting() or os.environ.get("PRECISIONOPS_PDL", "1") == "0":
        return {"PDL": False}
    return {"PDL": True, "launch_pdl": True} if device_properties(device).major >= 9 else {"PDL": False}


def gemv_early_dependents() -> bool:
    """Where a one-token GEMV (W4A16, W8A8) lets the next kernel launch under PDL: at its end
    (after its loop, before the output's reduction and store) unless
    ``PRECISIONOPS_GEMV_EARLY_DEPENDENTS=1`` (at its start, as before). End to end on the H100
    (bench/e2e_decode.py, 8 layers, compiled, runs alternated on one lease) int4 decode went from
    1565 and 1601 tokens/s to 1748 with the later trigger, from 1675 and 1690 to 1745 on another and
    from 1688 to 1755 on a third; fp8 measured no different (1132.9 against 1133.8). Why is not
    measured; launched at the GEMV's start, the kernel after it (attention, a norm or the
    next GEMV) holds SM slots and issues its own prologue loads while the GEMV still streams its
    weights."""
    return os.environ.get("PRECISIONOPS_GEMV_EARLY_DEPENDENTS", "0") == "1"


@triton.jit
def wait_prior_grid(PDL: tl.constexpr, LAUNCH_DEPENDENTS: tl.constexpr = True):
    """Under PDL: blocks until the previous kernel in the stream has finished and its writes are
    visible, then lets the next kernel launch (it waits likewise before it reads what this one
    writes), unless LAUNCH_DEPENDENTS is False: then the kernel calls :func:`launch_dependents`
    later itself. Loads of memory no kernel writes, such as weights, may come before it."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        if LAUNCH_DEPENDENTS:
            tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def launch_dependents(PDL: tl.constexpr):
    """Under PDL: lets the next kernel in the stream launch (its programs start and run up to
    their own wait); a program that exits without calling it counts as having called it."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


def zero_output(nargs):
    """Autotune pre-hook of split-K configs, whose programs add partial sums into ``out_ptr``;
    none for a launch whose splits reduce serially (``SERIAL``: see :func:`count_in_split`)."""
    if not nargs.get("SERIAL", False):
        nargs["out_ptr"].zero_()


# Count words of serial split-K reductions, one per output tile, by device. Each launch leaves
# them at zero (the last program of a tile resets its word), so they are zeroed once, when first
# asked for, as CUTLASS's serial split-K and Marlin's locks are. Launches on one device share
# them: two split-K launches must not run at once on different streams.
SPLIT_K_LOCKS = 1 << 16
_locks: dict[torch.device, torch.Tensor] = {}


def split_k_locks(device: torch.device, tiles: int) -> torch.Tensor:
    """The zeroed int32 count words for a serial split-K launch of ``tiles`` output tiles."""
    if tiles > SPLIT_K_LOCKS:
        raise ValueError(f"a serial split-K launch has at most {SPLIT_K_LOCKS} output tiles, got {tiles}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    locks = _locks.get(device)
    if locks is None:
        locks = _locks[device] = torch.zeros(SPLIT_K_LOCKS, dtype=torch.int32, device=device)
    return locks


@triton.jit
def count_in_split(partial, part_ptrs, mask, slice_size, lock_ptr, pid_k):
    """Serial split-K, every split: stores this split's fp32 partial tile in its own slice of
    ``part_ptrs`` and counts the program in at ``lock_ptr``. Returns how many splits of the tile
    had counted in before it: SPLIT_K - 1 makes this program the last, which then sums them
    (:func:`sum_splits`). One launch, where atomics into an output zeroed first need a fill
    before and a cast after."""
    tl.store(part_ptrs + pid_k * slice_size, partial, mask=mask)
    # Every thread's partial is stored before one thread counts the program in (release), and
    # the last program's loads come after its count (acquire).
    tl.debug_barrier()
    return tl.atomic_add(lock_ptr, 1, sem="acq_rel", scope="gpu")


@triton.jit
def sum_splits(part_ptrs, mask, slice_size, lock_ptr, SPLIT_K: tl.constexpr):
    """Serial split-K, the last program of a tile: the splits' partials summed in split order
    (the same sum whatever order they finished in). Resets the tile's count word to zero."""
    total = tl.load(part_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
    for s in tl.static_range(1, SPLIT_K):
        total += tl.load(part_ptrs + s * slice_size, mask=mask, other=0.0, cache_modifier=".cg")
    tl.atomic_xchg(lock_ptr, 0)
    return total


def use_triton(x: torch.Tensor, backend: str = "auto") -> bool:
    """Decides whether a call on ``x`` runs the Triton kernel.

    Args:
        x: the leading input tensor; its device decides the ``auto`` backend.
        backend: ``auto`` (Triton on CUDA, reference elsewhere), ``triton`` (forced; on the
            CPU it needs ``TRITON_INTERPRET=1``) or ``reference``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return False
    if backend == "auto":
        return x.is_cuda
    if not x.is_cuda and not interpreting():
        raise ValueError("backend='triton' on a CPU tensor needs TRITON_INTERPRET=1 set before triton is imported")
    return True


def check_2d(name: str, t: torch.Tensor) -> None:
    """Raises ValueError naming ``name`` unless ``t`` is a matrix."""
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")


def check_dtype(name: str, t: torch.Tensor, *dtypes: torch.dtype) -> None:
    """Raises ValueError naming ``name`` unless ``t`` has one of ``dtypes``."""
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise ValueError(f"{name} must have dtype {allowed}, got {t.dtype}")


def check_shape(name: str, t: torch.Tensor, *shapes: tuple[int, ...]) -> None:
    """Raises ValueError naming ``name`` unless ``t`` has one of ``shapes``."""
    if tuple(t.shape) not in shapes:
        allowed = " or ".join(str(list(s)) for s in shapes)
        raise ValueError(f"{name} must have shape {allowed}, got {list(t.shape)}")


def m_bucket(m: int) -> int:
    """Autotune key for the token count: the next power of two from 16, capped at 8192, so a
    decode step at M = 3 reuses the config tuned at M = 16 instead of tuning again."""
    return min(max(16, 1 << (max(m, 1) - 1).bit_length()), 8192)


# Bytes read between timed launches so each reads its operands from HBM, not L2 (50 MB on the
# H100): a decode GEMM's weights (32 MB at 8192 x 8192 int4) would otherwise stay cached. Read,
# not written: a written flush leaves the L2 full of dirty lines, and writing them back while
# the timed launch reads its own bytes charges it traffic that a decode step, whose previous
# launch read other weights, never pays.
_FLUSH_BYTES = 128 << 20
_GRAPH_REPS = 20


def graph_bench(kernel_call, quantiles=(0.5, 0.2, 0.8)):
    """Autotuner timing (Triton's ``do_bench`` hook) by CUDA-graph replay, in ms per call.

    Triton's default, ``do_bench``, times each launch from the host: under ~50 µs that measures
    the launch path more than the kernel, and it picked configs 10-20% slower than the best for
    the W4A16 decode kernels on the H100 (a CUDA-graph sweep found them). Here ``_GRAPH_REPS``
    calls, each after an L2 flush, are replayed from one graph, and a graph of the flushes alone
    is subtracted. One value stands for every quantile asked for."""
    kernel_call()  # compiles outside the capture
    flush = torch.ones(_FLUSH_BYTES, dtype=torch.uint8, device="cuda")

    def timed(graph):
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(5):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]

    with_kernel, flush_only = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(with_kernel):
        for _ in range(_GRAPH_REPS):
            flush.amax()
            kernel_call()
    with torch.cuda.graph(flush_only):
        for _ in range(_GRAPH_REPS):
            flush.amax()
    ms = max(timed(with_kernel) - timed(flush_only), 0.0) / _GRAPH_REPS
    return [ms for _ in quantiles] if quantiles else ms
