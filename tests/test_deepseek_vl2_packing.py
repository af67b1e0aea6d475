"""bfloat16 on CPU: weights packed for oneDNN (``deepseek_vl2.packing``), a decode step's experts and
attention as compiled kernels (``deepseek_vl2.decode_kernels``) over a bfloat16 KV cache, or a float32
cache where they cannot compile (``language.cache_dtype``): same numbers, same checkpoint.

The packed layout is what a CPU user in bfloat16 runs by default; the portable layout (stacked
experts, no host reads) is what GPUs run and what ``pack_cpu_weights=False`` keeps. Both are
checked against each other here; each against the upstream reference in the parity tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import FIXTURES
from safetensors.torch import load_file

from videocaption.deepseek_vl2 import DeepseekVL2, decode_kernels, generate
from videocaption.deepseek_vl2.generation import position_ids_from_mask
from videocaption.deepseek_vl2.language import Experts
from videocaption.deepseek_vl2.packing import (
    FusedPackedLinear,
    KernelExperts,
    PackedExperts,
    PackedGeluMlp,
    PackedLinear,
    packing_supported,
)
from videocaption.deepseek_vl2.vision import Mlp

pytestmark = pytest.mark.skipif(
    not packing_supported(torch.device("cpu"), torch.bfloat16), reason="this CPU's oneDNN has no bf16 kernels"
)


def load(pack: bool) -> DeepseekVL2:
    return DeepseekVL2.from_pretrained(FIXTURES / "model", device="cpu", dtype="bfloat16", pack_cpu_weights=pack)


@pytest.fixture(scope="module")
def pair() -> tuple[DeepseekVL2, DeepseekVL2]:
    return load(True), load(False)


def test_bfloat16_on_cpu_packs_by_default_and_float32_does_not(pair):
    packed, plain = pair
    modules = list(packed.model.language.modules())
    assert isinstance(packed.model.language.lm_head, PackedLinear)
    experts = KernelExperts if decode_kernels.available() else PackedExperts  # compiled kernel where it runs
    assert any(isinstance(m, experts) for m in modules)
    assert not any(isinstance(m, torch.nn.Linear) or type(m) is Experts for m in modules)  # nothing left as it was
    attention = packed.model.language.model.layers[0].self_attn  # q, k, v as one weight (one call a step)
    assert isinstance(attention.qkv_proj, FusedPackedLinear) and not hasattr(attention, "q_proj")
    assert sum(isinstance(m, FusedPackedLinear) for m in modules) == 2 * packed.config.language.num_hidden_layers
    # The vision tower too, its MLPs with the GELU fused into fc1 (docs/performance.md).
    vision = list(packed.model.vision.modules())
    assert sum(isinstance(m, PackedGeluMlp) for m in vision) == packed.config.vision.layers
    assert not any(isinstance(m, (torch.nn.Linear, Mlp)) for m in vision)
    assert any(isinstance(m, Experts) for m in plain.model.modules())
    float32 = DeepseekVL2.from_pretrained(FIXTURES / "model", device="cpu", dtype="float32")
    assert not any(isinstance(m, (PackedLinear, PackedExperts, KernelExperts)) for m in float32.model.modules())


def test_packed_state_dict_is_the_checkpoint(pair):
    packed, plain = pair
    ours, theirs = packed.model.state_dict(), plain.model.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    # The packed weights are counted where byte counts look (parameters and buffers).
    size = lambda m: sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])  # noqa: E731
    assert size(packed.model) == size(plain.model)


@torch.inference_mode()
def test_packed_gives_the_portable_layouts_numbers(pair):
    packed, plain = pair
    case = sorted((FIXTURES / "cases").glob("*.json"))[0]
    ref = load_file(str(case.with_suffix(".safetensors")))
    mask = ref["attention_mask"]
    embeds = ref["inputs_embeds"].to(torch.bfloat16)
    logits = []
    for runtime in (packed, plain):
        lm = runtime.model.language
        logits.append(lm.logits(lm.model(embeds, position_ids_from_mask(mask), mask)[:, -1]))
    # Same oneDNN kernels on the same weights; only the experts' order of calls differs.
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-2)
    outs = [
        generate(r.model.language, embeds, mask, max_new_tokens=6, eos_token_id=-1, output_scores=True) for r in pair
    ]
    assert outs[0].lengths == outs[1].lengths == [6] * mask.shape[0]
    # The compiled experts kernel of a decode step sums in another order than oneDNN's GEMMs:
    # bfloat16 logits then differ by up to two bfloat16 steps (0.031 at |logit| 2-4), never more.
    for a, b in zip(outs[0].scores, outs[1].scores):
        torch.testing.assert_close(a, b, rtol=0, atol=4e-2)


@torch.inference_mode()
def test_packed_vision_tower_gives_the_portable_numbers(pair):
    packed, plain = pair
    size = packed.config.vision.image_size
    tiles = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    ours, theirs = packed.model.vision(tiles).float(), plain.model.vision(tiles).float()
    # The fused GELU runs on fc1's float32 accumulator where the plain layout first rounds it to
    # bfloat16: a few bfloat16 steps apart at most, never more.
    scale = theirs.abs().max()
    assert (ours - theirs).abs().max() <= 0.05 * scale
    assert torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0) > 0.9999


def test_unknown_fused_activation_is_refused():
    with pytest.raises(ValueError, match="no fused activation 'swish'"):
        PackedLinear(torch.nn.Linear(4, 4).to(torch.bfloat16), activation="swish")


@pytest.mark.parametrize("convert", ["pack", "int8"])
def test_converting_frees_each_old_weight_before_the_next(convert, monkeypatch):
    # A 6 GiB model converted while every old module stayed referenced until the end held both
    # copies at once and was killed for memory on a 24 GiB machine (the int8 load of bench_upstream).
    import weakref

    from videocaption.deepseek_vl2 import packing, quantize

    targets = (
        [(packing, "PackedLinear"), (packing, "FusedPackedLinear")] if convert == "pack" else [(quantize, "Int8Linear")]
    )
    replaced: list[weakref.ref] = []

    def checking(original):
        class Checking(original):
            def __init__(self, *args):  # (linear, ...) or (attribute, {name: linear})
                linears = args[1].values() if len(args) > 1 and isinstance(args[1], dict) else [args[0]]
                assert all(ref() is None for ref in replaced), "a replaced weight is still alive"
                replaced.extend(weakref.ref(linear.weight) for linear in linears)
                super().__init__(*args)

        return Checking

    for module, name in targets:
        monkeypatch.setattr(module, name, checking(getattr(module, name)))
    net = load(False).model.requires_grad_(True)  # as while from_pretrained loads
    packing.pack_for_cpu(net.language) if convert == "pack" else quantize.quantize_language_int8(net.language)
    assert len(replaced) > 10 and all(ref() is None for ref in replaced)
    # Nothing converted keeps an autograd graph (which would hold a float copy of its weight).
    assert not any(t.grad_fn is not None for t in [*net.parameters(), *net.buffers()])


def test_cpu_decoding_keeps_a_float32_cache_only_without_the_compiled_kernels(monkeypatch):
    from videocaption.deepseek_vl2.language import cache_dtype

    compiled = decode_kernels.available()
    assert cache_dtype(torch.device("cpu"), torch.bfloat16) == (torch.bfloat16 if compiled else torch.float32)
    assert cache_dtype(torch.device("cpu"), torch.float32) == torch.float32
    assert cache_dtype(torch.device("cuda"), torch.bfloat16) == torch.bfloat16
    monkeypatch.setattr(decode_kernels, "available", lambda: False)
    assert cache_dtype(torch.device("cpu"), torch.bfloat16) == torch.float32


@torch.inference_mode()
@pytest.mark.parametrize("padded", [False, True])
def test_float32_and_bfloat16_caches_give_the_same_numbers(pair, monkeypatch, padded):
    # The float32 cache holds the bfloat16 keys and values widened, and the compiled kernel widens
    # the bfloat16 cache in registers: only the order of the attention's float32 sums differs.
    from videocaption.deepseek_vl2 import generation
    from videocaption.deepseek_vl2.language import KVCache

    lm = pair[0].model.language
    case = sorted((FIXTURES / "cases").glob("*.json"))[0]
    ref = load_file(str(case.with_suffix(".safetensors")))
    embeds, mask = ref["inputs_embeds"].to(torch.bfloat16), ref["attention_mask"].bool()
    if padded:  # a second, shorter row on the left padding
        embeds, mask = torch.cat([embeds, embeds]), torch.cat([mask, mask])
        mask[1, :3] = False
    stored: list[tuple[torch.dtype, int]] = []
    append = KVCache.append

    def spy(self, layer_idx, key, value):
        append(self, layer_idx, key, value)
        stored.append((self._values[layer_idx].dtype, self.key_block))

    monkeypatch.setattr(KVCache, "append", spy)
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        monkeypatch.setattr(generation, "cache_dtype", lambda device, model_dtype, dtype=dtype: dtype)
        stored.clear()
        runs[dtype] = generate(lm, embeds, mask, max_new_tokens=6, eos_token_id=-1, output_scores=True)
        # the bfloat16 cache's keys in blocks where the compiled kernel reads them (language.key_block)
        block = decode_kernels.KEY_BLOCK if dtype == torch.bfloat16 and decode_kernels.available() else 0
        assert set(stored) == {(dtype, block)} or padded and set(stored) == {(dtype, block), (dtype, 0)}
    wide, narrow = runs[torch.float32], runs[torch.bfloat16]
    assert wide.sequences.tolist() == narrow.sequences.tolist()
    for a, b in zip(wide.scores, narrow.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-2)


@pytest.fixture(scope="module")
def bfloat16_checkpoint(tmp_path_factory) -> Path:
    """The fixture model saved in bfloat16, as the official checkpoints are (no cast at load)."""
    import shutil

    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("bf16-model")
    for file in (FIXTURES / "model").iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, folder / file.name)
    tensors = load_file(str(FIXTURES / "model" / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
@pytest.mark.parametrize("pack", [True, False])
def test_a_converted_model_keeps_no_checkpoint_file_mapped(bfloat16_checkpoint, pack):
    # Weights left as views of the memory-mapped files kept every file's mapping, and every page
    # packing had read, resident: 12.5 GB for the full-size model instead of 6.7 GB. Weights used
    # as stored (not packed) stay views, the page cache shared with other processes: the control.
    code = (
        "import gc, sys; from videocaption.deepseek_vl2 import DeepseekVL2\n"
        "rt = DeepseekVL2.from_pretrained(sys.argv[1], device='cpu', dtype='bfloat16', "
        f"pack_cpu_weights={pack})\n"
        "gc.collect(); print(sum('.safetensors' in line for line in open('/proc/self/maps')))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(bfloat16_checkpoint)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    mapped = int(done.stdout.strip().splitlines()[-1])
    assert (mapped == 0) if pack else (mapped > 0), mapped
