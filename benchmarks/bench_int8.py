"""What ``dtype="int8"`` does to the numbers: the reference fixtures in bfloat16 and in int8.

Run from the repository root::

    python -m benchmarks.bench_int8 [--fixtures tests/fixtures/deepseek_vl2_reference]

For every reference case (upstream DeepSeek-VL2's float32 outputs on the fixture checkpoint),
the stored ``inputs_embeds`` go through our decoder in bfloat16 and in int8 (weights int8,
activations bfloat16), and it prints, against the float32 reference: the largest absolute and
the relative (Frobenius) difference of the last-position logits, and greedy agreement: the
generated tokens equal to the reference's, up to the first that differs, out of how many.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.common import ROOT, machine
from videocaption.deepseek_vl2 import DeepseekVL2, generate
from videocaption.deepseek_vl2.generation import position_ids_from_mask


@torch.inference_mode()
def compare(runtime: DeepseekVL2, case: Path) -> tuple[float, float, int, int]:
    meta, ref = json.loads(case.read_text()), load_file(str(case.with_suffix(".safetensors")))
    lm = runtime.model.language
    embeds, mask = ref["inputs_embeds"].to(runtime.dtype), ref["attention_mask"]
    hidden = lm.model(embeds, position_ids_from_mask(mask), mask)
    logits = lm.logits(hidden[:, -1])
    expected = ref["logits_last"]
    max_abs = (logits - expected).abs().max().item()
    relative = ((logits - expected).norm() / expected.norm()).item()
    generation = meta["generation"]
    out = generate(
        lm, embeds, mask, max_new_tokens=generation["max_new_tokens"], eos_token_id=generation["eos_token_id"]
    )
    agree = total = 0
    for ours, theirs in zip(out.sequences.tolist(), ref["generated_ids"].tolist()):
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(theirs))
        agree, total = agree + same, total + len(theirs)
    return max_abs, relative, agree, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=ROOT / "tests" / "fixtures" / "deepseek_vl2_reference")
    args = parser.parse_args()
    cases = sorted((args.fixtures / "cases").glob("*.json"))
    print(f"machine: {machine()}; {len(cases)} reference cases from {args.fixtures}")
    print(f"{'case':<28} {'dtype':<9} {'max |dlogit|':>12} {'rel. error':>10} {'greedy agreement':>17}")
    for dtype in ("bfloat16", "int8"):
        runtime = DeepseekVL2.from_pretrained(args.fixtures / "model", device="cpu", dtype=dtype)
        totals = [0, 0]
        for case in cases:
            max_abs, relative, agree, total = compare(runtime, case)
            totals = [totals[0] + agree, totals[1] + total]
            print(f"{case.stem:<28} {dtype:<9} {max_abs:>12.4f} {relative:>10.4f} {agree:>8} of {total:<6}")
        print(f"{'all cases':<28} {dtype:<9} {'':>12} {'':>10} {totals[0]:>8} of {totals[1]:<6}")


if __name__ == "__main__":
    main()
