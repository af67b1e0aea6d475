"""The cost of constrained decoding (--events): the grammar's work per token against a decode step.

Run from the repository root (short on 2 cores: one batch of one frame, one constrained call)::

    python -m benchmarks.bench_events [--new-tokens 80] [--dtype bfloat16]

Two measurements:

1. The real deepseek-vl2-tiny architecture (``bench_full_size.build_runtime``, random weights)
   describes one frame of the sample clip with the events schema: the decode steps' time
   (``generate``'s ``decode_s``) and, inside it, the grammar's (``JsonGuide.mask_s``: masks,
   the closing plans, applying the mask). The runtime's tokenizer is the reference fixture's
   (2000 tokens), so this measures the model side exactly and the grammar on a small vocabulary.
2. The grammar alone on a vocabulary the size of the real one: a synthetic byte-level BPE
   vocabulary of 129,280 entries (the byte alphabet, then words and punctuation runs), a full
   events object decoded from random logits with a budget, timed per token. llguidance's mask
   cost grows with the vocabulary, so this is the figure to set against a decode step.

The goal (issue 23): the grammar under 5% of decode time.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import SAMPLE_CLIP, ffmpeg_frames, machine, video_size

REAL_VOCAB = 129280


def synthetic_tokenizer_json(size: int = REAL_VOCAB, seed: int = 0) -> str:
    """A byte-level BPE tokenizer of ``size`` entries (no merges: llguidance reads the vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    words: set[str] = set()
    for path in list(Path(sys.prefix).glob("lib/python3*/*.py"))[:400]:
        words.update(re.findall(r"[A-Za-z]{2,12}", path.read_text(errors="ignore")))
    rng = random.Random(seed)
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    pieces = ['":"', '","', '"]', '"}', '":[', '":{', "},{", '":"', "],", "Ġ", "ĠĠ", '":0']
    candidates = sorted(words)
    for word in candidates:
        for form in (word, "Ġ" + word, word.lower(), "Ġ" + word.lower(), word.capitalize()):
            vocab.setdefault(form, len(vocab))
        if len(vocab) >= size:
            break
    letters = "abcdefghijklmnopqrstuvwxyz"
    while len(vocab) < size:
        stem = "".join(rng.choice(letters) for _ in range(rng.randint(2, 7)))
        vocab.setdefault(rng.choice(["", "Ġ", '"', "_"]) + stem + rng.choice(["", *pieces]), len(vocab))
    vocab = dict(list(vocab.items())[: size - 1])
    vocab["<eos>"] = size - 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


def grammar_only(new_tokens: int) -> dict:
    """Per-token grammar cost on a real-sized vocabulary, random logits, a full object."""
    from videocaption.backends.grammar import GrammarTokenizer, RowGuide, min_tokens
    from videocaption.events import batch_schema, default_schema, grammar

    started = time.perf_counter()
    tokenizer = GrammarTokenizer.from_tokenizers_json(
        synthetic_tokenizer_json(), vocab_size=REAL_VOCAB, eos_token_id=REAL_VOCAB - 1
    )
    build_s = time.perf_counter() - started
    compiled = grammar(batch_schema(default_schema(), 0.0, 4.0))
    least = min_tokens(tokenizer, compiled)
    row = RowGuide(tokenizer, compiled)
    generator = torch.Generator().manual_seed(0)
    tokens = []
    for step in range(new_tokens):
        token = row.choose(torch.randn(REAL_VOCAB, generator=generator), new_tokens - step)
        if token == tokenizer.eos:
            break
        tokens.append(token)
    text = tokenizer.llg.decode_str(tokens)
    json.loads(text)  # complete, by construction
    return {
        "vocab": REAL_VOCAB,
        "tokenizer_build_s": round(build_s, 3),
        "min_tokens": least,
        "tokens": len(tokens),
        "grammar_ms_per_token": round(1000 * row.mask_s / max(len(tokens), 1), 3),
        "forced": row.forced,
        "plans": row.plans,
    }


def full_size(new_tokens: int, dtype: str) -> dict:
    """One constrained call of the full-size architecture: decode steps against the grammar's share."""
    import videocaption.backends.deepseek_vl2_backend as backend
    from benchmarks.bench_full_size import build_runtime
    from videocaption.events import batch_schema, default_schema
    from videocaption.prompts import events_prompt

    runtime = build_runtime("cpu", dtype, weights=True)
    outputs = []
    plain = backend.generate

    def recording(*args, **kwargs):
        out = plain(*args, **kwargs)
        outputs.append(out)
        return out

    backend.generate = recording
    image = next(iter(ffmpeg_frames(SAMPLE_CLIP, 1.0, video_size(SAMPLE_CLIP))))
    image = runtime.prepare_image(image, 1)
    schema = batch_schema(default_schema(), 0.0, 0.0)
    least = runtime.min_events_tokens(schema)
    budget = max(new_tokens, least)
    prompt = events_prompt([0.0], schema, time_aware=True)
    started = time.perf_counter()
    (answer,) = runtime.describe_batch([([image], prompt)], max_new_tokens=budget, json_schemas=[schema])
    wall = time.perf_counter() - started
    json.loads(answer)
    out, guide = outputs[-1], runtime.last_guide
    steps = max(out.lengths[0], 1)
    return {
        "dtype": dtype,
        "max_new_tokens": budget,
        "tokens": out.lengths[0],
        "prefill_s": round(out.prefill_s, 2),
        "decode_s": round(out.decode_s, 2),
        "decode_s_per_token": round(out.decode_s / steps, 4),
        "grammar_s": round(guide.mask_s, 4),
        "grammar_ms_per_token": round(1000 * guide.mask_s / steps, 3),
        "grammar_share_of_decode": round(guide.mask_s / out.decode_s, 5) if out.decode_s else None,
        "grammar_share_of_call": round(guide.mask_s / wall, 5),
        "forced": guide.forced,
        "plans": sum(r.plans for r in guide.rows),
        "call_s": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_events", description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=80)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--skip-full-size", action="store_true", help="only the grammar on the large vocabulary")
    args = parser.parse_args(argv)
    report = {"machine": machine(), "grammar_only": grammar_only(max(args.new_tokens, 120))}
    print(json.dumps(report["grammar_only"]), flush=True)
    if not args.skip_full_size:
        report["full_size"] = full_size(args.new_tokens, args.dtype)
        big = report["grammar_only"]["grammar_ms_per_token"] / 1000
        report["real_vocab_share_of_decode"] = round(big / report["full_size"]["decode_s_per_token"], 5)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
