"""Runs the upstream DeepSeek-VL2 implementation once, inside its own venv (see bench_upstream).

Launched by :mod:`benchmarks.bench_upstream` with the upstream venv's python, as a script::

    UPSTREAM_VENV/bin/python benchmarks/upstream_runner.py CHECKOUT JOB.json      # one timed call
    UPSTREAM_VENV/bin/python benchmarks/upstream_runner.py CHECKOUT --probe       # can it import?

Why a separate file that imports nothing of this project: upstream pins transformers 4.38.2 and
numpy<2, which our venv cannot hold, so it runs in a venv of its own, from a checkout given on the
command line (nothing of upstream is vendored). The few things that stop upstream from importing on
a current CPU-only torch are patched here at run time, never in upstream's files:

* ``attrdict`` (a dependency) reads ``collections.Mapping`` & co., gone since Python 3.10;
* ``xformers`` (CUDA only) provides the vision tower's ``memory_efficient_attention``; a stand-in
  computes it with torch's SDPA (xformers takes [B, M, H, K], SDPA [B, H, M, K]);
* torchvision's C extension (needed only for detection ops) is skipped: the PyPI wheel's is built
  against CUDA, and its fake-kernel registrations fail without it; upstream uses only transforms.

The job file names the checkpoint directory, the images (PNG), the prompt, the number of new tokens
and where to save the first token's logits. The last stdout line is the result as JSON.
"""

from __future__ import annotations

import collections
import collections.abc
import importlib.util
import json
import sys
import time
import types
from pathlib import Path


def install_shims() -> None:
    """Make upstream importable on Python 3.11, a CPU-only torch and no xformers (see above)."""
    for name in ("Mapping", "MutableMapping", "Sequence"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))

    import torch.nn.functional as F

    def memory_efficient_attention(q, k, v, attn_bias=None, p=0.0, scale=None, **_):
        # xformers layout [B, M, H, K] -> SDPA's [B, H, M, K] and back
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_bias, dropout_p=p, scale=scale
        )
        return out.transpose(1, 2)

    xformers = types.ModuleType("xformers")
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    xformers.ops = ops
    sys.modules.setdefault("xformers", xformers)
    sys.modules.setdefault("xformers.ops", ops)

    try:
        import torchvision
    except RuntimeError:
        for name in list(sys.modules):
            if name.startswith("torchvision"):
                del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401


def import_upstream(checkout: str) -> None:
    """Import the ``deepseek_vl2`` package of ``checkout`` (the import path is left as it is:
    the package is loaded from its directory, and its submodules follow its ``__path__``)."""
    package = Path(checkout) / "deepseek_vl2"
    spec = importlib.util.spec_from_file_location(
        "deepseek_vl2", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"no deepseek_vl2 package in {checkout}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["deepseek_vl2"] = module
    spec.loader.exec_module(module)


def probe(checkout: str) -> None:
    install_shims()
    import_upstream(checkout)
    import torch
    import transformers
    from deepseek_vl2.models import DeepseekVLV2ForCausalLM, DeepseekVLV2Processor  # noqa: F401

    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}), flush=True)


def run(checkout: str, job_path: str) -> None:
    install_shims()
    import_upstream(checkout)
    import torch
    from deepseek_vl2.models import DeepseekVLV2ForCausalLM, DeepseekVLV2Processor
    from PIL import Image
    from transformers import LogitsProcessor, LogitsProcessorList

    job = json.loads(open(job_path).read())
    dtype = torch.bfloat16
    start = time.perf_counter()
    processor = DeepseekVLV2Processor.from_pretrained(job["model"])
    model = DeepseekVLV2ForCausalLM.from_pretrained(job["model"], torch_dtype=dtype, low_cpu_mem_usage=True)
    model = model.eval().requires_grad_(False)
    load_s = time.perf_counter() - start
    images = [Image.open(path).convert("RGB") for path in job["images"]]
    conversation = [
        {"role": "<|User|>", "content": job["prompt"], "images": job["images"]},
        {"role": "<|Assistant|>", "content": ""},
    ]

    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        """Called once per new token, right after the forward that produced its logits."""

        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    first_logits: list[torch.Tensor] = []

    def keep_first(_module, _inputs, output):
        if not first_logits:  # the prompt forward: logits of every position; the last one is next-token
            first_logits.append(output[0, -1].float().clone())

    hook = model.language.lm_head.register_forward_hook(keep_first) if job.get("logits") else None
    tokenizer = processor.tokenizer
    new_tokens = int(job["new_tokens"])
    with torch.inference_mode():
        start = time.perf_counter()
        inputs = processor(conversations=conversation, images=images, force_batchify=True, system_prompt="")
        inputs = inputs.to(model.device, dtype=dtype)
        embeds = model.prepare_inputs_embeds(**inputs)
        out = model.language.generate(
            inputs_embeds=embeds,
            attention_mask=inputs.attention_mask,
            pad_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # random weights: always exactly new_tokens tokens
            do_sample=False,
            use_cache=True,
            logits_processor=LogitsProcessorList([Stamp()]),
        )
        text = tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
        call_s = time.perf_counter() - start
    if hook is not None:
        hook.remove()
        torch.save(first_logits[0], job["logits"])
    generated = len(stamps)
    print(
        json.dumps(
            {
                "side": "upstream",
                "dtype": "bfloat16",
                "load_s": load_s,
                "call_s": call_s,
                "first_token_s": stamps[0] - start,
                "decode_per_token_s": (stamps[-1] - stamps[0]) / max(generated - 1, 1),
                "new_tokens": generated,
                "prompt_tokens": int(inputs.input_ids.shape[1]),
                "text_chars": len(text),
                "torch_threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    if sys.argv[2] == "--probe":
        probe(sys.argv[1])
    else:
        run(sys.argv[1], sys.argv[2])
