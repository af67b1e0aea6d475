"""The structure the runtime's speed depends on, checked so that a change that undoes it fails.

* One OpenMP pool: every model call runs on one long-lived model thread, whichever thread calls
  (``deepseek_vl2.threads``; docs/performance.md says why it matters: 1.4-1.9x).
* No host sync in the per-token loop but the one stop check: each extra decoded step may read
  the device once (``Tensor.tolist`` of the eos flags), whatever the batch, padding or experts.
* Routed experts stacked at load, while the checkpoint keeps its per-expert keys.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import pytest
import torch
from accelerator import DEVICE, DTYPE
from helpers import FIXTURES

from videocaption.backends import deepseek_vl2_backend
from videocaption.deepseek_vl2 import DeepseekVL2, generate
from videocaption.deepseek_vl2.language import Experts
from videocaption.deepseek_vl2.threads import model_thread_native_id

CALLERS = 3


@pytest.fixture(scope="module")
def runtime() -> DeepseekVL2:
    # The portable layout (stacked experts, no host reads) that GPUs run; bfloat16 on a CPU packs
    # its weights instead (tests/test_deepseek_vl2_packing.py).
    return DeepseekVL2.from_pretrained(
        FIXTURES / "model", device=str(DEVICE), dtype=str(DTYPE).removeprefix("torch."), pack_cpu_weights=False
    )


def settled_thread_count() -> int:
    """OS threads of this process once the count stops moving (exiting threads leave with a delay)."""
    count = len(os.listdir("/proc/self/task"))
    for _ in range(50):
        time.sleep(0.02)
        count, previous = len(os.listdir("/proc/self/task")), count
        if count == previous:
            break
    return count


def call_from_threads(call, callers: int = CALLERS) -> int:
    """Run ``call`` on ``callers`` new threads that stay alive; the OS threads the process gained meanwhile."""
    release, done = threading.Event(), threading.Barrier(callers + 1)

    def work() -> None:
        call()
        done.wait()
        release.wait()

    before = settled_thread_count()
    threads = [threading.Thread(target=work) for _ in range(callers)]
    for thread in threads:
        thread.start()
    done.wait()
    grown = len(os.listdir("/proc/self/task")) - before
    release.set()
    for thread in threads:
        thread.join()
    return grown


def test_model_calls_run_on_one_thread_whoever_calls(runtime, monkeypatch):
    ran_on = []
    original = deepseek_vl2_backend.generate

    def recording(*args, **kwargs):
        ran_on.append(threading.get_native_id())
        return original(*args, **kwargs)

    monkeypatch.setattr(deepseek_vl2_backend, "generate", recording)
    runtime.complete_batch(["Hello."], max_new_tokens=2)
    call_from_threads(lambda: runtime.complete_batch(["Hi."], max_new_tokens=2))
    assert len(ran_on) == 1 + CALLERS
    assert set(ran_on) == {model_thread_native_id()} and threading.get_native_id() not in ran_on


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/task") or torch.get_num_threads() < 2 or DEVICE.type != "cpu",
    reason="counts OpenMP worker threads on a Linux CPU with 2+ torch threads",
)
def test_callers_add_no_openmp_pool(runtime):
    call = lambda: runtime.complete_batch(["Hello there."], max_new_tokens=3)  # noqa: E731
    call()  # lazily started pools (tokenizer, the model thread's own team) exist from here on
    assert call_from_threads(call) <= CALLERS  # the callers themselves, no worker threads of theirs
    # The control, so this test can fail: the same work run on the callers' own threads brings
    # a team of workers with them (torch.get_num_threads() - 1 each, seen as 2 or 3 of the 3 here).
    direct = call_from_threads(lambda: runtime._generate_here([([], "Hello there.")], 3))
    assert direct > CALLERS


@contextmanager
def counting_host_reads():
    """Count the Tensor methods that copy a value to the host (a device sync on a GPU)."""
    counts = {"n": 0}
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy", "cpu")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def counted(original):
        def wrapper(self, *args, **kwargs):
            counts["n"] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@pytest.mark.parametrize("padded", [False, True], ids=["same-length", "left-padded"])
@torch.inference_mode()
def test_one_host_read_per_decoded_token(runtime, padded):
    lm = runtime.model.language
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 24, lm.config.hidden_size, generator=gen) * 0.5).to(DEVICE, DTYPE)
    mask = torch.ones(3, 24, dtype=torch.bool, device=DEVICE)
    if padded:
        mask[1, :5] = mask[2, :9] = False
    reads = {}
    for steps in (2, 10):
        with counting_host_reads() as counts:
            out = generate(lm, x, mask, max_new_tokens=steps, eos_token_id=-1)  # never stops early
        assert out.lengths == [steps] * 3
        reads[steps] = counts["n"]
    assert reads[10] - reads[2] == 8, reads  # the stop check, nothing else, per extra token


def test_experts_are_stacked_and_keep_checkpoint_keys(runtime):
    moe_layers = [layer.mlp for layer in runtime.model.language.model.layers if hasattr(layer.mlp, "experts")]
    assert moe_layers and all(isinstance(moe.experts, Experts) for moe in moe_layers)
    experts = moe_layers[0].experts
    assert experts.gate_up_proj.shape[0] == experts.num_experts == runtime.config.language.n_routed_experts
    keys = set(runtime.model.state_dict())
    first = runtime.config.language.first_k_dense_replace
    for e in (0, experts.num_experts - 1):
        for name in ("gate_proj", "up_proj", "down_proj"):
            assert f"language.model.layers.{first}.mlp.experts.{e}.{name}.weight" in keys
    assert not any("gate_up_proj" in key for key in keys)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="int8 is a CPU option")
@torch.inference_mode()
def test_int8_option_stays_close_to_the_reference():
    # Measured (benchmarks/bench_int8.py): relative logit error ~0.02 (bfloat16: ~0.01), greedy ids
    # all equal on the fixtures; 0.05 is the bfloat16 bound of tests/accelerator.py.
    from safetensors.torch import load_file

    from videocaption.deepseek_vl2.generation import position_ids_from_mask
    from videocaption.deepseek_vl2.quantize import Int8Experts, Int8Linear

    runtime = DeepseekVL2.from_pretrained(FIXTURES / "model", device="cpu", dtype="int8")
    lm = runtime.model.language
    assert isinstance(lm.lm_head, Int8Linear) and any(isinstance(m, Int8Experts) for m in lm.modules())
    case = sorted((FIXTURES / "cases").glob("*.json"))[0]
    ref = load_file(str(case.with_suffix(".safetensors")))
    mask = ref["attention_mask"]
    hidden = lm.model(ref["inputs_embeds"].to(torch.bfloat16), position_ids_from_mask(mask), mask)
    logits, expected = lm.logits(hidden[:, -1]), ref["logits_last"]
    assert ((logits - expected).norm() / expected.norm()).item() < 0.05
    out = generate(lm, ref["inputs_embeds"].to(torch.bfloat16), mask, max_new_tokens=4, eos_token_id=-1)
    assert out.lengths == [4] * mask.shape[0]


def test_model_thread_passes_exceptions_back_and_is_reentrant():
    from videocaption.deepseek_vl2.threads import THREAD_NAME, run_on_model_thread

    with pytest.raises(ZeroDivisionError):
        run_on_model_thread(lambda: 1 / 0)
    nested = run_on_model_thread(lambda: run_on_model_thread(threading.get_native_id))  # no deadlock
    assert nested == model_thread_native_id()
    thread = next(t for t in threading.enumerate() if t.name == THREAD_NAME)
    assert thread.daemon  # Ctrl-C must not wait for a generate in progress
