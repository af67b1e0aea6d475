"""The compiled decode-step kernels (``deepseek_vl2.decode_kernels``, on by default in bfloat16 on
a CPU, off with ``LLM_CAPTION_COMPILE=0``): the same numbers as the eager layers, used for a decode
step's few tokens only, and the eager layers when turned off or where they cannot compile."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from helpers import FIXTURES

from videocaption.deepseek_vl2 import decode_kernels
from videocaption.deepseek_vl2.language import KVCache, MoE, one_query_attention
from videocaption.deepseek_vl2.packing import packing_supported

needs_kernels = pytest.mark.skipif(not decode_kernels.compiler_works(), reason="inductor cannot compile here")


def random_moe(experts: int = 8, hidden: int = 64, inter: int = 32, top_k: int = 3) -> MoE:
    from videocaption.deepseek_vl2.config import LanguageConfig

    config = LanguageConfig(
        hidden_size=hidden, moe_intermediate_size=inter, n_routed_experts=experts, num_experts_per_tok=top_k
    )
    moe = MoE(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in moe.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return moe.to(torch.bfloat16).eval()


@needs_kernels
@torch.inference_mode()
@pytest.mark.parametrize("tokens", [1, 3, decode_kernels.FEW_TOKENS])
def test_compiled_experts_give_the_grouped_layers_numbers(tokens):
    moe = random_moe()
    generator = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, 64, generator=generator).to(torch.bfloat16)
    idx, weight = moe.gate(x)
    idx[-1] = idx[0]  # two tokens on the same experts: each pair still counts once per token
    expected = moe.route(x, idx, weight)  # the stacked layout's grouped GEMMs
    got = decode_kernels.compiled_chosen_experts.compiled(
        x, idx, weight, moe.experts.gate_up_proj, moe.experts.down_proj, moe.experts.act_fn
    )
    # float32 sums in another order, each product rounded to bfloat16 as the GEMMs round it
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)


@torch.inference_mode()
def test_the_experts_formula_is_the_weighted_sum_of_each_expert():
    moe = random_moe().float()
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    idx, weight = moe.gate(x)
    got = decode_kernels.chosen_experts(x, idx, weight, moe.experts.gate_up_proj, moe.experts.down_proj, F.silu)
    expected = torch.stack(
        [sum(w * moe.experts.expert(int(e), row) for e, w in zip(i, ws)) for row, i, ws in zip(x, idx, weight)]
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_kernels
@torch.inference_mode()
@pytest.mark.parametrize("masked", [False, True])
def test_compiled_attention_over_a_bfloat16_cache_gives_the_float32_numbers(masked):
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 1, 16, generator=generator).to(torch.bfloat16)
    k, v = (torch.randn(2, 4, 37, 16, generator=generator).to(torch.bfloat16) for _ in range(2))
    mask = None
    if masked:  # left padding on the second row
        mask = torch.ones(2, 1, 1, 37, dtype=torch.bool)
        mask[1, ..., :5] = False
    expected = one_query_attention(q, k.float(), v.float(), mask=mask, scale=0.25)  # the eager float32 path
    got = decode_kernels.compiled_one_query_attention.compiled(q, k, v, mask, 0.25)  # over the bfloat16 cache
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.01, atol=0.01)


def grown_caches(rows: int = 2, heads: int = 3, dim: int = 8) -> tuple[KVCache, KVCache]:
    """A row-major and a blocked bfloat16 cache given the same keys and values: a 21-token prompt,
    then decode steps past a block's end and past the capacity (the storage grows)."""
    generator = torch.Generator().manual_seed(3)
    caches = KVCache(capacity=24, dtype=torch.bfloat16), KVCache(capacity=24, dtype=torch.bfloat16, key_block=16)
    for t in (21, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1):
        key, value = (torch.randn(rows, heads, t, dim, generator=generator) for _ in range(2))
        for cache in caches:
            cache.append(0, key, value)
    return caches


def test_a_blocked_cache_holds_the_same_keys_and_values():
    plain, blocked = grown_caches()
    assert blocked._keys[0].shape[2:] == (3, 8, 16) and len(blocked) == 33  # 33 positions in 3 blocks
    for a, b in zip(plain.keys_values(0), blocked.keys_values(0)):
        assert torch.equal(a, b)
    rows = torch.tensor([1])
    plain.select(rows), blocked.select(rows)  # a finished row leaves the batch
    for a, b in zip(plain.keys_values(0), blocked.keys_values(0)):
        assert torch.equal(a, b) and a.shape[0] == 1
    batch = KVCache(dtype=torch.bfloat16, key_block=16)
    batch.fill_left_padded([(2, plain), (2, blocked)], 35)  # a left-padded batch from row caches
    keys, values = batch.keys_values(0)
    for row, cache in enumerate((plain, blocked)):
        assert torch.equal(keys[row, :, 2:], cache.keys_values(0)[0][0]) and not keys[row, :, :2].any()
        assert torch.equal(values[row, :, 2:], cache.keys_values(0)[1][0]) and not values[row, :, :2].any()


def test_blocked_keys_hand_attention_whole_blocks_with_the_tail_masked():
    _, blocked = grown_caches()
    padding = torch.ones(2, 1, 1, 33, dtype=torch.bool)
    padding[1, ..., :4] = False
    for mask in (None, padding):
        keys, values, widened = blocked.blocked(0, mask)
        assert keys.shape == (2, 3, 3, 8, 16) and values.shape == (2, 3, 48, 8)
        expected = torch.zeros(2, 1, 1, 48, dtype=torch.bool)  # past the end: masked (and zero values)
        expected[..., :33] = True if mask is None else mask
        assert torch.equal(widened, expected) and not values[:, :, 33:].any()


@needs_kernels
@torch.inference_mode()
@pytest.mark.parametrize("masked", [False, True])
def test_compiled_attention_over_blocked_keys_gives_the_float32_numbers(masked):
    plain, blocked = grown_caches(heads=4, dim=16)
    q = torch.randn(2, 4, 1, 16, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    mask = None
    if masked:  # left padding on the second row
        mask = torch.ones(2, 1, 1, 33, dtype=torch.bool)
        mask[1, ..., :5] = False
    k, v = plain.keys_values(0)
    expected = one_query_attention(q, k.float(), v.float(), mask=mask, scale=0.25)  # the eager float32 path
    keys, values, widened = blocked.blocked(0, mask)
    got = decode_kernels.compiled_blocked_query_attention.compiled(q, keys, values, widened, 0.25)
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.01, atol=0.01)
    assert torch.equal(one_query_attention(q, keys, values, mask=widened, scale=0.25), got)  # 5-D keys: the kernel


def test_a_moe_layer_hands_only_a_decode_steps_few_tokens_to_the_kernel():
    moe = random_moe()
    calls: list[int] = []
    moe.experts.few_tokens = lambda x, idx, weight: calls.append(x.shape[0]) or torch.zeros_like(x)
    with torch.inference_mode():
        moe(torch.zeros(1, decode_kernels.FEW_TOKENS, 64, dtype=torch.bfloat16))
        moe(torch.zeros(1, decode_kernels.FEW_TOKENS + 1, 64, dtype=torch.bfloat16))  # a prompt: GEMMs
    assert calls == [decode_kernels.FEW_TOKENS]


@pytest.mark.parametrize("case", ["default", "turned off", "no compiler"])
def test_bfloat16_on_cpu_uses_the_kernels_unless_turned_off_or_uncompilable(case, tmp_path):
    # By default the kernels' stacked experts and a bfloat16 cache; with LLM_CAPTION_COMPILE=0, or
    # where inductor cannot compile (one warning), packed experts and a float32 cache. Either way it decodes.
    kernels = case == "default" and decode_kernels.compiler_works()
    script = (
        "import torch; from videocaption.deepseek_vl2 import DeepseekVL2, decode_kernels;"
        "from videocaption.deepseek_vl2.language import cache_dtype;"
        "from videocaption.deepseek_vl2.packing import KernelExperts, PackedExperts, packing_supported;"
        f"m = DeepseekVL2.from_pretrained({str(FIXTURES / 'model')!r}, device='cpu', dtype='bfloat16');"
        "on = decode_kernels.available();"
        "kinds = {type(x).__name__ for x in m.model.modules() if isinstance(x, (KernelExperts, PackedExperts))};"
        "print(on, cache_dtype(torch.device('cpu'), torch.bfloat16), sorted(kinds));"
        "from PIL import Image;"
        "print(type(m.describe([Image.new('RGB', (64, 64))], '<image> Say something.', max_new_tokens=3)).__name__)"
    )
    env = {key: value for key, value in os.environ.items() if key != "LLM_CAPTION_COMPILE"}
    if case == "turned off":
        env["LLM_CAPTION_COMPILE"] = "0"
    if case == "no compiler":  # and an empty cache, so that nothing compiled earlier is reused
        env.update(CXX=str(tmp_path / "no-such-g++"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    *_, layout, answer = result.stdout.strip().splitlines()
    if kernels:
        assert layout == "True torch.bfloat16 ['KernelExperts']"
    else:  # (no experts of either kind where oneDNN has no bfloat16 kernels: nothing is packed)
        packed = "'PackedExperts'" if packing_supported(torch.device("cpu"), torch.bfloat16) else ""
        assert layout == f"False torch.float32 [{packed}]"
    assert answer == "str"
    if case == "no compiler":
        assert "compiled decode kernels unavailable (InductorError: InvalidCxxCompiler" in result.stderr


def test_a_kernel_that_fails_to_compile_in_a_run_falls_back_to_its_formula(caplog):
    kernel = decode_kernels.Kernel(torch.add)
    compiled_calls: list[int] = []

    def failing(*args):
        compiled_calls.append(1)
        raise RuntimeError("no C++ compiler for this size")

    kernel.compiled = failing
    with caplog.at_level("WARNING"):
        first, second = kernel(torch.ones(2), torch.ones(2)), kernel(torch.ones(3), torch.ones(3))
    assert first.tolist() == [2.0, 2.0] and second.tolist() == [2.0, 2.0, 2.0]
    assert compiled_calls == [1]  # not tried again: the rest of the run is eager
    assert "compiled add failed (RuntimeError: no C++ compiler for this size)" in caplog.text


@needs_kernels
@torch.inference_mode()
def test_a_kernel_call_lets_other_python_threads_run():
    # Inductor's Python wrapper called its C++ kernels with the GIL held: inside the pipeline the
    # model then stalled BMF's Python threads and waited on them (9-15% slower calls). A thread
    # counting beside one long call must keep counting while the kernel runs.
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(1, 8, decode_kernels.FEW_TOKENS, 64, generator=generator).to(torch.bfloat16)
    k, v = (torch.randn(1, 8, 131_072, 64, generator=generator).to(torch.bfloat16) for _ in range(2))
    kernel = decode_kernels.compiled_one_query_attention.compiled
    counted, stop = [0], threading.Event()

    def count() -> None:
        while not stop.is_set():
            counted[0] += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        for _ in range(4):  # a call long enough to tell (150-300 ms on 2 cores), on faster machines too
            kernel(q, k, v, None, 0.125)  # compiled before the measured call
            before = counted[0]
            time.sleep(0.05)  # the counter alone (this thread sleeps): its rate
            per_ms, before, started = (counted[0] - before) / 50, counted[0], time.perf_counter()
            kernel(q, k, v, None, 0.125)
            during, ms = counted[0] - before, (time.perf_counter() - started) * 1e3
            if ms > 100:
                break
            k, v = torch.cat([k, k], dim=2), torch.cat([v, v], dim=2)
    finally:
        stop.set()
        counter.join()
    # Released, it counted through 69-109% of the call; held (inductor's Python wrapper), 5-11%:
    # a switch interval (5 ms) here and there, between the graph's kernels.
    assert ms > 100, f"the call took {ms:.0f} ms: too short to tell"
    assert during > 0.35 * per_ms * ms, f"{during} counts in the {ms:.0f} ms call ({per_ms:.0f} a ms alone)"
