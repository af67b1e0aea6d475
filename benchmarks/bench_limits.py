"""The real architecture against this machine's limits: prefill vs its FLOP bound, decode vs its memory bound.

Run from the repository root::

    python -m benchmarks.bench_limits [--frames 4] [--new-tokens 9] [--repeats 2] [--batches 1,4]

Why: "fast" means "near what the hardware allows". In one process this measures

* the bf16 matmul peak (best of a few 2048^3 GEMMs) right before each timed stage, and the memory
  read bandwidth (sums over fresh 2 GiB buffers of random data, far beyond any L3) right before and after each decode
  call: on a shared machine both move with the load, so each time is compared with the limit
  measured beside it;
* the prefill of one ``--frames``-frame prompt (as :mod:`benchmarks.bench_full_size` builds it:
  deepseek-vl2-tiny with random weights, 16 vision heads), stage by stage: vision tower, projector,
  LM prefill. Each stage's FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on the
  real shapes; bound = FLOPs / matmul peak; ratio = measured / bound (min and median over ``--repeats``);
* the decode step at each batch size (batch b: b prompts as long as the prefill's, of random tokens):
  bytes one step reads = the language model's weights except the embedding table and the routed
  experts, plus the distinct routed experts the step's tokens chose (counted per layer), plus the
  KV cache; bound = bytes / bandwidth; ratio = measured ms per token / bound, per call (``--repeats``
  calls per batch size, the sizes interleaved; min and median).

Random weights never choose ``eos`` on purpose: every row decodes ``--new-tokens`` tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_full_size import build_runtime, sample_frames
from benchmarks.common import machine
from videocaption.deepseek_vl2.generation import generate, position_ids_from_mask
from videocaption.deepseek_vl2.language import Experts, KVCache, MoEGate, cache_dtype
from videocaption.deepseek_vl2.packing import PackedExperts
from videocaption.deepseek_vl2.quantize import Int8Experts
from videocaption.deepseek_vl2.threads import run_on_model_thread
from videocaption.options import DEFAULT_BATCH_PROMPT
from videocaption.prompts import batch_prompt


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 6) -> float:
    """Best FLOP/s of ``size``^3 GEMMs in ``dtype``."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def read_bandwidth(gib: float = 2.0, buffers: int = 3) -> float:
    """Median over ``buffers`` fresh ``gib`` GiB buffers of random float32 of the best bytes/s of a sum.

    Random data, not ``torch.ones``: on the development VM a buffer of identical pages read at
    either ~35 or ~55-62 GB/s from one allocation to the next (the host merging identical pages
    is the likely cause), while random buffers, like weights, read at 31-37 GB/s every time. A fresh
    buffer each time, and the median, so one lucky placement does not set the bound.
    """
    rates = []
    for _ in range(buffers):
        x = torch.rand(int(gib * 2**30) // 4)
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - start)
        rates.append(x.numel() * 4 / best)
        del x
    return statistics.median(rates)


def _cpu_attention_flops(query, key, value, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs) -> int:
    """q k^T and a v of CPU SDPA (FlopCounterMode has no formula for it); causal: half the pairs."""
    *lead, q_len, head_dim = query
    pairs = q_len * key[-2] // (2 if is_causal else 1)
    return 2 * pairs * (head_dim + value[-1]) * (lead[0] * lead[1])


def _grouped_mm_flops(x, weight, *args, out_shape=None, **kwargs) -> int:
    """[N, K] rows through their groups' [K, out] matrices: 2 N K out (FlopCounterMode has none)."""
    return 2 * x[0] * x[1] * weight[-1]


def _packed_linear_flops(x, weight, *args, out_shape=None, **kwargs) -> int:
    """[..., in] rows through a packed [out, in] weight (``deepseek_vl2.packing``): 2 rows in out."""
    rows = 1
    for n in x[:-1]:
        rows *= n
    return 2 * rows * x[-1] * weight[0]


CUSTOM_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._grouped_mm: _grouped_mm_flops,
    torch.ops.mkldnn._linear_pointwise: _packed_linear_flops,  # packets: FlopCounterMode looks up func.overloadpacket
}


def flops(fn) -> tuple[float, object]:
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        out = fn()
    return counter.get_total_flops(), out


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def requests_for(runtime, rows: int, frames: int):
    """``rows`` prompts of ``frames`` frames each, different frames per row, same token count."""
    pool = sample_frames(frames + rows - 1)
    out = []
    for r in range(rows):
        group = pool[r : r + frames]
        images = [runtime.prepare_image(image, frames) for image, _ in group]
        out.append((images, batch_prompt(DEFAULT_BATCH_PROMPT, [t for _, t in group], time_aware=True)))
    return out


@torch.inference_mode()
def prefill_stages(
    runtime, frames: int, repeats: int
) -> tuple[list[tuple[str, float, list[tuple[float, float]]]], int]:
    """(stage, FLOPs, (seconds, matmul peak measured just before) per repeat) for vision, projector,
    LM prefill (+ lm_head on the last row); and the prompt's length."""
    model = runtime.model
    batch = runtime._batch(requests_for(runtime, 1, frames)).to(runtime.device, dtype=runtime.dtype)
    n = sum(1 + w * h for w, h in model.tiles_per_row(batch.images_spatial_crop)[0])
    tiles = batch.images[0, :n]
    vision = lambda: model.vision(tiles)  # noqa: E731
    vision_flops, features = flops(vision)
    projector = lambda: model.projector(features)  # noqa: E731
    projector_flops, projected = flops(projector)
    embeds = model.prepare_inputs_embeds(
        batch.input_ids, None, batch.images_seq_mask, batch.images_spatial_crop, image_embeds=projected
    )
    positions = position_ids_from_mask(batch.attention_mask)
    lm = model.language

    def prefill():
        return lm.logits(lm.model(embeds, positions, None, KVCache(capacity=embeds.shape[1] + 1))[:, -1])

    lm_flops, _ = flops(prefill)
    rows = [("vision tower", vision_flops, []), ("projector", projector_flops, []), ("LM prefill", lm_flops, [])]
    for _ in range(repeats):  # interleaved: each stage timed right after a peak measurement
        for (_, _, times), fn in zip(rows, (vision, projector, prefill)):
            peak = matmul_peak(runtime.dtype, repeats=3)
            times.append((timed(fn, 1)[0], peak))
    print(f"prompt: {frames} frames = {n} tiles, {embeds.shape[1]} tokens", flush=True)
    return rows, embeds.shape[1]


def routed_experts(lm) -> list:
    """The routed-expert modules of each MoE layer (``Experts``, ``PackedExperts`` or ``Int8Experts``)."""
    return [m for m in lm.modules() if isinstance(m, (Experts, Int8Experts, PackedExperts))]


def step_bytes(runtime, batch_rows: int, cache_len: int, experts_used: list[float]) -> float:
    """Bytes one decode step reads: dense LM weights + the distinct routed experts chosen + the KV cache."""
    lm = runtime.model.language
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    own = lambda m: [*m.parameters(recurse=False), *m.buffers(recurse=False)]  # noqa: E731
    routed_ids = {id(t) for m in routed_experts(lm) for t in own(m)}
    tensors = {**dict(lm.named_parameters()), **dict(lm.named_buffers())}
    dense = sum(size(t) for name, t in tensors.items() if id(t) not in routed_ids and "embed_tokens" not in name)
    if lm.config.tie_word_embeddings:
        dense += size(lm.lm_head.weight)
    routed = sum(
        used * sum(size(t) for t in own(m)) / m.num_experts for m, used in zip(routed_experts(lm), experts_used)
    )
    c = lm.config
    kv_itemsize = cache_dtype(runtime.device, runtime.dtype).itemsize  # what generate keeps the cache in
    kv = 2 * c.num_hidden_layers * batch_rows * c.num_key_value_heads * c.head_dim * cache_len * kv_itemsize
    return dense + routed + kv


@torch.inference_mode()
def decode(runtime, rows: int, prompt_len: int, new_tokens: int) -> tuple[float, float, int, float]:
    """(ms per decode step, bytes a step reads, prompt length, read bandwidth measured just before
    and after) for one call of ``rows`` prompts.

    The prompts are token embeddings of random ids, ``prompt_len`` long: a decode step costs the
    same whatever the prompt held, and the vision tower need not run again for every row.
    """
    model = runtime.model
    ids = torch.randint(
        model.config.language.vocab_size, (rows, prompt_len), generator=torch.Generator().manual_seed(rows)
    )
    embeds = model.language.model.embed_tokens(ids.to(runtime.device))
    mask = torch.ones(rows, prompt_len, dtype=torch.bool, device=runtime.device)
    used: list[list[int]] = []
    original = MoEGate.forward

    def counting(self, x):  # distinct experts per MoE layer, on one-token-per-row calls only
        idx, weight = original(self, x)
        if x.shape[0] == rows:
            used.append([idx.unique().numel()])
        return idx, weight

    MoEGate.forward = counting
    try:
        before = read_bandwidth()
        out = generate(model.language, embeds, mask, max_new_tokens=new_tokens, eos_token_id=-1)
        bandwidth = (before + read_bandwidth()) / 2
    finally:
        MoEGate.forward = original
    layers = len(routed_experts(model.language))
    per_layer = [statistics.mean(u[0] for u in used[i::layers]) for i in range(layers)]
    cache_len = embeds.shape[1] + new_tokens // 2
    return (
        out.decode_s / (new_tokens - 1) * 1000,
        step_bytes(runtime, rows, cache_len, per_layer),
        embeds.shape[1],
        bandwidth,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "int8"])
    parser.add_argument("--skip-prefill", action="store_true", help="decode only, after a --prompt-len prompt")
    parser.add_argument("--prompt-len", type=int, default=1799, help="with --skip-prefill (4 frames: 1799)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's); 1 gives steadier "
        "ratios on a loaded machine, where OpenMP barriers wait for descheduled threads",
    )
    args = parser.parse_args()
    if args.threads:
        run_on_model_thread(torch.set_num_threads, args.threads)  # where every measurement runs

    runtime = build_runtime("cpu", args.dtype, weights=True)
    runtime.processor.eos_id = -1
    print(
        f"machine: {machine()}; deepseek-vl2-tiny architecture, random weights, {args.dtype}, "
        f"{runtime.config.vision.heads} vision heads",
        flush=True,
    )
    stages, prompt_len = (
        ([], args.prompt_len)
        if args.skip_prefill
        else run_on_model_thread(prefill_stages, runtime, args.frames, args.repeats)
    )
    # Batch sizes interleaved, --repeats calls each: this VM's memory speed moves by 1.5x within minutes.
    batches = list(map(int, args.batches.split(",")))
    runs: dict[int, list[tuple[float, float, int, float]]] = {rows: [] for rows in batches}
    for _ in range(args.repeats):
        for rows in batches:
            runs[rows].append(run_on_model_thread(decode, runtime, rows, prompt_len, args.new_tokens))
    if stages:
        print(
            f"{'stage':<14} {'GFLOP':>9} {'peak TFLOP/s':>12} {'bound s':>8} {'min s':>8} {'median s':>9} "
            f"{'ratio min':>9} {'median':>7}  (bound from the peak measured just before each repeat)"
        )
    total_flops = total_min = total_bound = 0.0
    for name, work, stage_runs in stages:
        ratios = [seconds / (work / peak) for seconds, peak in stage_runs]
        best = min(stage_runs)
        total_flops, total_min, total_bound = total_flops + work, total_min + best[0], total_bound + work / best[1]
        print(
            f"{name:<14} {work / 1e9:>9.1f} {statistics.median(p for _, p in stage_runs) / 1e12:>12.3f} "
            f"{work / best[1]:>8.3f} {best[0]:>8.3f} {statistics.median(t for t, _ in stage_runs):>9.3f} "
            f"{min(ratios):>8.2f}x {statistics.median(ratios):>6.2f}x"
        )
    if stages:
        print(
            f"{'prefill total':<14} {total_flops / 1e9:>9.1f} {'':>12} {total_bound:>8.3f} {total_min:>8.3f} {'':>9} "
            f"{total_min / total_bound:>8.2f}x  (fastest repeat of each stage; goal <= 1.4x)"
        )
    print(
        f"{'decode':<14} {'rows':>4} {'prompt':>6} {'MB/step':>8} {'GB/s':>6} {'bound ms':>9} "
        f"{'min ms':>7} {'median':>7} {'ratio min':>9} {'median':>7}  (bound from the bandwidth beside each call)"
    )
    medians = {}
    for rows in batches:
        ms = [run[0] for run in runs[rows]]
        ratios = [run[0] / (run[1] / run[3] * 1000) for run in runs[rows]]
        nbytes, prompt = statistics.median(r[1] for r in runs[rows]), runs[rows][0][2]
        bandwidth = statistics.median(r[3] for r in runs[rows])
        medians[rows] = statistics.median(ms)
        print(
            f"{'':<14} {rows:>4} {prompt:>6} {nbytes / 1e6:>8.0f} {bandwidth / 1e9:>6.1f} "
            f"{nbytes / bandwidth * 1000:>9.1f} {min(ms):>7.1f} {medians[rows]:>7.1f} "
            f"{min(ratios):>8.2f}x {statistics.median(ratios):>6.2f}x  (goal <= 1.25x)"
        )
    if len(batches) > 1:
        print(
            f"batch {batches[-1]} step costs {medians[batches[-1]] / medians[batches[0]]:.2f}x a batch-1 step (medians)"
        )


if __name__ == "__main__":
    main()
