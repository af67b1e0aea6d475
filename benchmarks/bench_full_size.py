"""The real deepseek-vl2-tiny architecture with random weights: memory and time per batch.

Run from the repository root::

    python -m benchmarks.bench_full_size [--device cpu] [--dtype bfloat16] [--batch-sizes 1,4,max]
                                         [--new-tokens 4] [--warmup 0]
    python -m benchmarks.bench_full_size --device cuda --dtype bfloat16 --warmup 1   # with a GPU

Why: the tiny test checkpoint says nothing about the real model's footprint. This builds the
network from the official deepseek-vl2-tiny ``config.json`` values (SigLIP so400m/14 at 384 px,
1152 wide, 27 layers, 16 heads; DeepSeek-MoE with vocab 129280, hidden 1280, 12 layers, 10 heads, 64 routed
experts of which 6 per token plus 2 shared, dense first layer; 4096-token context; about 3.4 B
parameters) with random weights (no download), and describes one batch of ``batch_size``
frames of the sample clip (1280x720, prepared as the pipeline prepares them, with the pipeline's
prompt) for batch sizes 1, 4 and the largest that fits the context (``check_batch_fits``'s rule
at ``--new-tokens``). Each batch size runs in a fresh process, which reports the peak memory:
resident set size (``ru_maxrss``: weights + activations + Python) on CPU,
``torch.cuda.max_memory_allocated`` on CUDA. The processor and tokenizer are the reference
fixture's (same image settings; a 2000-token vocabulary, so prompts are a little shorter than
with the real tokenizer). Random weights give noise text; with ``eos`` never chosen on purpose
the answer length is fixed at ``--new-tokens``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from PIL import Image

from benchmarks.common import (
    SAMPLE_CLIP,
    TINY_MODEL,
    ffmpeg_frames,
    machine,
    peak_rss_mib,
    report_to_parent,
    run_child,
    video_size,
)

# The official deepseek-ai/deepseek-vl2-tiny config.json values that differ from the reference
# fixture's config (whose layout mirrors the official file key by key; candidate_resolutions,
# tile_tag and global_view_pos are already the official ones).
OFFICIAL_TINY = {
    "vision_config": {
        "model_name": "siglip_so400m_patch14_384",
        "layers": 27,
        "width": 1152,
        "mlp_ratio": 3.7362,
        "patch_size": 14,
    },
    "projector_config": {"input_dim": 1152, "n_embed": 1280},
    "language_config": {
        "vocab_size": 129280,
        "hidden_size": 1280,
        "intermediate_size": 6848,
        "moe_intermediate_size": 896,
        "num_hidden_layers": 12,
        "num_attention_heads": 10,
        "num_key_value_heads": 10,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_experts_per_tok": 6,
        "first_k_dense_replace": 1,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "use_mla": False,
        "kv_lora_rank": None,
        "q_lora_rank": None,
        "qk_nope_head_dim": 0,
        "qk_rope_head_dim": 0,
        "v_head_dim": 0,
        "max_position_embeddings": 4096,
        "bos_token_id": 0,
        "eos_token_id": 1,
    },
}


def official_config_dict() -> dict:
    """The official deepseek-vl2-tiny ``config.json`` contents (the fixture's file, official values)."""
    data = json.loads((TINY_MODEL / "config.json").read_text())
    for section, values in OFFICIAL_TINY.items():
        data[section] = {**data[section], **values}
    # The official vision_config leaves heads unset, so upstream's default (16) applies; the
    # fixture's 4 would make attention cheaper than the real model's.
    data["vision_config"].pop("heads", None)
    return data


def official_config():
    from videocaption.deepseek_vl2.config import DeepseekVL2Config

    return DeepseekVL2Config.from_dict(official_config_dict())


def build_runtime(device: str, dtype: str, *, weights: bool):
    """A DeepseekVL2 runtime around the full-size network; random weights, or meta tensors only."""
    from videocaption.backends.devices import resolve_device, resolve_dtype
    from videocaption.deepseek_vl2 import DeepseekVL2
    from videocaption.deepseek_vl2.packing import pack_network_for_cpu, packing_supported
    from videocaption.deepseek_vl2.processor import DeepseekVL2Processor
    from videocaption.deepseek_vl2.threads import run_on_model_thread

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    # Built on the model thread, where the runtime will run it (one OpenMP pool: deepseek_vl2.threads).
    net = run_on_model_thread(_random_network, torch_device, torch_dtype, weights)
    if dtype == "int8" and weights:  # as DeepseekVL2.from_pretrained(dtype="int8") does after loading
        from videocaption.deepseek_vl2.quantize import quantize_language_int8

        run_on_model_thread(quantize_language_int8, net.language, torch_dtype)
    if weights and packing_supported(torch_device, torch_dtype):  # as from_pretrained does on CPU
        run_on_model_thread(pack_network_for_cpu, net)
    processor = DeepseekVL2Processor.from_pretrained(TINY_MODEL)
    return DeepseekVL2("deepseek-vl2-tiny (random weights)", net, processor, device=torch_device, dtype=torch_dtype)


def _random_network(torch_device: torch.device, torch_dtype: torch.dtype, weights: bool):
    from videocaption.deepseek_vl2.model import DeepseekVL2Model

    with torch.device("meta"):
        net = DeepseekVL2Model(official_config())
    if weights:
        net = net.to_empty(device=torch_device).to(torch_dtype)
        generator = torch.Generator(device=torch_device).manual_seed(0)
        with torch.no_grad():
            for name, param in net.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, 0.02, generator=generator)
    return net.eval().requires_grad_(False)


def largest_batch(new_tokens: int) -> int:
    """The largest batch_size the pipeline accepts for this model (``check_batch_fits``'s rule)."""
    from videocaption.captioning.captioner import fitting_batch_sizes
    from videocaption.options import CaptionOptions

    runtime = build_runtime("cpu", "float32", weights=False)
    options = CaptionOptions(model=str(TINY_MODEL), max_new_tokens=new_tokens, device="cpu")
    return max(fitting_batch_sizes(runtime, options))


def sample_frames(count: int) -> list[tuple[Image.Image, float]]:
    """``count`` frames of the sample clip at 1 fps (cycling through its 6 when more are asked)."""
    images = list(ffmpeg_frames(SAMPLE_CLIP, 1.0, video_size(SAMPLE_CLIP)))
    return [(images[i % len(images)], float(i)) for i in range(count)]


def child(batch_size: int, device: str, dtype: str, new_tokens: int, warmup: int) -> None:
    """In a fresh process: build, describe one batch (after ``warmup`` untimed ones), report."""
    from videocaption.options import DEFAULT_BATCH_PROMPT
    from videocaption.prompts import batch_prompt

    start = time.perf_counter()
    runtime = build_runtime(device, dtype, weights=True)
    build_s = time.perf_counter() - start
    tensors = [*runtime.model.parameters(), *runtime.model.buffers()]  # packed and int8 weights are buffers
    params = sum(p.numel() for p in tensors)
    weights_mib = sum(p.numel() * p.element_size() for p in tensors) / 2**20
    frames = sample_frames(batch_size)
    images = [runtime.prepare_image(image, batch_size) for image, _ in frames]
    prompt = batch_prompt(DEFAULT_BATCH_PROMPT, [t for _, t in frames], time_aware=True)
    request = [(images, prompt)]
    prompt_tokens = runtime.count_tokens(prompt, [im.size for im in images])
    runtime.processor.eos_id = -1  # random weights: decode exactly new_tokens tokens
    for _ in range(warmup):
        runtime.describe_batch(request, max_new_tokens=new_tokens)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    runtime.describe_batch(request, max_new_tokens=new_tokens)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    report_to_parent(
        {
            "batch_size": batch_size,
            "params": params,
            "weights_mib": weights_mib,
            "prompt_tokens": prompt_tokens,
            "build_s": build_s,
            "batch_s": seconds,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if runtime.device.type == "cuda" else peak_rss_mib(),
            "peak_kind": "cuda max_memory_allocated" if runtime.device.type == "cuda" else "process peak RSS",
            "device": torch.cuda.get_device_name() if runtime.device.type == "cuda" else machine(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16", "int8"])
    parser.add_argument("--batch-sizes", default="1,4,max", help="comma-separated; 'max' = the largest that fits")
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls first (1 is cheap on a GPU)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        child(args.child, args.device, args.dtype, args.new_tokens, args.warmup)
        return
    largest = largest_batch(args.new_tokens)
    sizes = [largest if s.strip() == "max" else int(s) for s in args.batch_sizes.split(",")]
    print(
        f"deepseek-vl2-tiny architecture, random weights, {args.device} {args.dtype}, {args.new_tokens} new tokens, "
        f"{args.warmup} warm-up call(s); largest batch_size that fits 4096 tokens: {largest}"
    )
    rows = []
    for size in sizes:
        r = run_child(
            "benchmarks.bench_full_size",
            "--child",
            str(size),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--new-tokens",
            str(args.new_tokens),
            "--warmup",
            str(args.warmup),
            timeout=1800,
        )
        rows.append(r)
        print(f"  batch_size {size}: done in {r['batch_s']:.1f} s", flush=True)
    print(
        f"device: {rows[0]['device']}; {rows[0]['params'] / 1e9:.2f} B parameters, weights {rows[0]['weights_mib']:.0f} MiB"
    )
    print(
        f"{'batch_size':>10} {'prompt tok':>10} {'s / batch':>9} {'s / frame':>9} {'peak MiB':>9}  ({rows[0]['peak_kind']})"
    )
    for r in rows:
        print(
            f"{r['batch_size']:>10} {r['prompt_tokens']:>10} {r['batch_s']:>9.1f} {r['batch_s'] / r['batch_size']:>9.1f} {r['peak_mib']:>9.0f}"
        )


if __name__ == "__main__":
    main()
