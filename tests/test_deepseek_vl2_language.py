"""DeepSeek-MoE decoder parts that no reference fixture covers (the fixture model is MHA + greedy).

Tiny random configs exercise multi-head latent attention (as in deepseek-vl2-small/base), the
``noaux_tc`` sigmoid router with groups and score-correction bias (as in deepseek-vl2 base), and
the other router variants, each against a straightforward re-computation:
cache vs no cache, left-padded batch vs single rows, absorbed MLA vs plain MLA, grouped experts
vs a per-token loop. A whole tiny MLA + noaux_tc checkpoint then goes through the public API.
Another device or dtype: see ``accelerator`` (routing and masks are checked in float32 always).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from accelerator import DEVICE, DTYPE, EXACT, assert_close
from helpers import FIXTURES
from PIL import Image
from safetensors.torch import save_file

from videocaption.deepseek_vl2 import DeepseekVL2, DeepseekVL2Config, DeepseekVL2Model, LanguageConfig, generate
from videocaption.deepseek_vl2.generation import position_ids_from_mask
from videocaption.deepseek_vl2.language import DeepseekV2ForCausalLM, KVCache, MoE, MoEGate, attention_mask

TOL = 1e-5

MLA = dict(
    vocab_size=300,
    hidden_size=48,
    intermediate_size=96,
    moe_intermediate_size=24,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    use_mla=True,
    kv_lora_rank=32,
    q_lora_rank=None,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=12,
    n_routed_experts=8,
    num_experts_per_tok=3,
    n_shared_experts=2,
    first_k_dense_replace=1,
    topk_method="noaux_tc",
    scoring_func="sigmoid",
    n_group=4,
    topk_group=2,
    norm_topk_prob=True,
    routed_scaling_factor=2.0,
    max_position_embeddings=512,
    rope_theta=10000.0,
)
VARIANTS = {
    "mla_noaux_tc": MLA,
    "mla_q_lora_greedy": {
        **MLA,
        "q_lora_rank": 24,
        "topk_method": "greedy",
        "scoring_func": "softmax",
        "norm_topk_prob": False,
        "routed_scaling_factor": 1.0,
        "n_group": 1,
        "topk_group": 1,
    },
    "mha_gqa_group_limited": {
        **MLA,
        "use_mla": False,
        "num_key_value_heads": 2,
        "topk_method": "group_limited_greedy",
        "scoring_func": "softmax",
        "attention_bias": True,
    },
}


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights of a sensible scale (norms near 1, matrices ~ 1/sqrt(fan_in), biases small)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen).to(p.device)
            if (
                name.endswith("norm.weight")
                or name.endswith("layernorm.weight")
                or name.split(".")[-2:-1] in (["norm1"], ["norm2"])
            ):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() >= 2:
                # fan-in: the last dim of a matrix or of stacked experts [E, out, in]; a conv [out, in, k, k]: in*k*k
                p.copy_(noise / math.sqrt(p.shape[-1] if p.dim() <= 3 else p[0].numel()))
            else:
                p.copy_(0.1 * noise)
    return module


def language_model(overrides: dict, seed: int = 0, dtype: torch.dtype = DTYPE) -> DeepseekV2ForCausalLM:
    """A seeded random decoder on the device under test (see ``accelerator``)."""
    config = LanguageConfig(**overrides)
    config.validate()
    return randomize(DeepseekV2ForCausalLM(config), seed).eval().to(DEVICE, dtype)


@pytest.fixture(params=sorted(VARIANTS), scope="module")
def lm(request) -> DeepseekV2ForCausalLM:
    return language_model(VARIANTS[request.param])


def embeds(lm: DeepseekV2ForCausalLM, batch: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    weight = next(lm.parameters())
    return torch.randn(batch, length, lm.config.hidden_size, generator=gen).to(weight.device, weight.dtype)


def left_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, n_i, D] rows -> a left-padded [B, T, D] batch (zeros as padding) and its [B, T] mask."""
    t = max(row.shape[1] for row in rows)
    x = rows[0].new_zeros(len(rows), t, rows[0].shape[2])
    mask = torch.zeros(len(rows), t, dtype=torch.bool, device=rows[0].device)
    for i, row in enumerate(rows):
        x[i, t - row.shape[1] :] = row[0]
        mask[i, t - row.shape[1] :] = True
    return x, mask


@torch.inference_mode()
def test_cache_matches_full_forward(lm):
    x = embeds(lm, 2, 20, seed=1)
    positions = torch.arange(20, device=DEVICE).expand(2, 20)
    full = lm(x, positions)  # [2, 20, vocab], no cache
    cache = KVCache()
    steps = [lm(x[:, :12], positions[:, :12], cache=cache)]
    for t in range(12, 20):  # one token at a time through the cache
        steps.append(lm(x[:, t : t + 1], positions[:, t : t + 1], cache=cache))
    assert len(cache) == 20
    assert_close(torch.cat(steps, dim=1), full, TOL, "cached steps")


@torch.inference_mode()
def test_left_padded_batch_matches_single_rows(lm):
    lengths = [17, 9, 13]
    rows = [embeds(lm, 1, n, seed=10 + i) for i, n in enumerate(lengths)]
    x, mask = left_padded(rows)
    batched = generate(lm, x, mask, max_new_tokens=6, eos_token_id=-1, output_scores=True)
    full = lm(x, position_ids_from_mask(mask), mask)
    for i, row in enumerate(rows):
        single = generate(
            lm,
            row,
            torch.ones(1, row.shape[1], dtype=torch.bool, device=DEVICE),
            max_new_tokens=6,
            eos_token_id=-1,
            output_scores=True,
        )
        if EXACT:  # bfloat16 ids may flip on near-ties, and the later steps then follow other ids
            assert torch.equal(batched.sequences[i], single.sequences[0])
        for step, scores in enumerate(single.scores if EXACT else single.scores[:1]):
            assert_close(batched.scores[step][i], scores[0], TOL, f"row {i} step {step}")
        alone = lm(row, torch.arange(row.shape[1], device=DEVICE)[None])
        assert_close(full[i, mask[i]], alone[0], TOL, f"row {i} alone")


def test_attention_mask_with_padding():
    real = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    mask, is_causal = attention_mask(real, q_len=3, past_len=2, device=torch.device("cpu"))
    assert not is_causal and mask.shape == (2, 1, 3, 5)
    assert torch.equal(mask[1, 0], torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool())
    assert torch.equal(mask[0, 0], torch.tensor([[0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]).bool())
    prefill, _ = attention_mask(real[:, :3], q_len=3, past_len=0, device=torch.device("cpu"))
    assert prefill[0, 0].any(-1).all()  # padding queries still see themselves: no empty softmax row
    assert not prefill[0, 0, 2, :2].any()  # and real queries never see padding
    assert attention_mask(None, 4, 0, torch.device("cpu")) == (None, True)
    # one query with a mask: built without reading the mask on the host (no sync per decode step)
    one, is_causal = attention_mask(real[1:], 1, 4, torch.device("cpu"))
    assert not is_causal and one.shape == (1, 1, 1, 5) and one.all()


def rope_pairs(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE that rotates adjacent pairs (x0, x1), (x2, x3)... as complex numbers.

    DeepSeek de-interleaves and then rotates halves; both orders give the same dot products
    as long as queries and keys are treated alike, so this is an independent formulation.
    """
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device).float() / d))
    angles = positions[:, None, :, None].float() * inv_freq  # [B, 1, T, d/2]
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


@torch.inference_mode()
def test_absorbed_mla_matches_plain_mla():
    lm = language_model(VARIANTS["mla_q_lora_greedy"], dtype=torch.float32)  # the plain formula in float32
    attn, c = lm.model.layers[0].self_attn, lm.config
    b, t, h = 2, 11, c.num_attention_heads
    x = embeds(lm, b, t, seed=3)
    positions = torch.stack([torch.arange(t), torch.arange(5, 5 + t)]).to(DEVICE)
    # Plain MLA: decompress keys and values per head with kv_b_proj, then ordinary attention.
    q = attn.q_b_proj(attn.q_a_layernorm(attn.q_a_proj(x))).view(b, t, h, -1).transpose(1, 2)
    q_nope, q_pe = q.split([c.qk_nope_head_dim, c.qk_rope_head_dim], dim=-1)
    latent, k_pe = attn.kv_a_proj_with_mqa(x).split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
    kv = attn.kv_b_proj(attn.kv_a_layernorm(latent)).view(b, t, h, -1).transpose(1, 2)
    k_nope, v = kv.split([c.qk_nope_head_dim, c.v_head_dim], dim=-1)
    q_pe = rope_pairs(q_pe, positions, c.rope_theta)
    k_pe = rope_pairs(k_pe[:, None], positions, c.rope_theta).expand(-1, h, -1, -1)
    scores = (q_nope @ k_nope.mT + q_pe @ k_pe.mT) / math.sqrt(c.qk_nope_head_dim + c.qk_rope_head_dim)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool, device=DEVICE).triu(1), float("-inf"))
    plain = attn.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1))
    tested = language_model(VARIANTS["mla_q_lora_greedy"]).model  # in the dtype under test
    rope = tested.rotary_emb(positions, DTYPE)  # the tables the decoder computes once per forward
    absorbed = tested.layers[0].self_attn(x.to(DTYPE), rope, None, True, None)
    assert_close(absorbed, plain, TOL, "absorbed MLA")


def naive_gate(gate: MoEGate, x: torch.Tensor) -> list[dict[int, float]]:
    """Per token {expert: weight}, written out from the routing rules one token at a time."""
    routes = []
    per_group = gate.n_routed_experts // (gate.n_group or 1)
    for token in x.float():
        logits = gate.weight.float() @ token
        scores = logits.softmax(-1) if gate.scoring_func == "softmax" else logits.sigmoid()
        choice = scores + (gate.e_score_correction_bias.float() if gate.topk_method == "noaux_tc" else 0)
        if gate.topk_method == "greedy":
            allowed = set(range(gate.n_routed_experts))
        else:
            groups = [choice[g * per_group : (g + 1) * per_group] for g in range(gate.n_group)]
            rank = [
                g.sort(descending=True).values[:2].sum() if gate.topk_method == "noaux_tc" else g.max() for g in groups
            ]
            best = sorted(range(gate.n_group), key=lambda g: -rank[g])[: gate.topk_group]
            allowed = {e for g in best for e in range(g * per_group, (g + 1) * per_group)}
        # Experts outside the chosen groups compete with score 0.0 (upstream masks with 0, not -inf).
        masked = [choice[e].item() if e in allowed else 0.0 for e in range(gate.n_routed_experts)]
        chosen = sorted(range(gate.n_routed_experts), key=lambda e: -masked[e])[: gate.top_k]
        weights = {e: scores[e].item() for e in chosen}
        if gate.norm_topk_prob and gate.top_k > 1:
            total = sum(weights.values()) + 1e-20
            weights = {e: w / total for e, w in weights.items()}
        routes.append({e: w * gate.routed_scaling_factor for e, w in weights.items()})
    return routes


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.inference_mode()
def test_router_and_experts_match_per_token_loop(variant):
    lm = language_model(VARIANTS[variant], seed=5, dtype=torch.float32)  # routing compares exactly
    moe = lm.model.layers[1].mlp
    assert isinstance(moe, MoE)
    if moe.gate.topk_method == "noaux_tc":  # a bias large enough to change choices, kept >= 0 so that
        # no masked 0.0 ties enter the choice (that quirk has its own test below)
        moe.gate.e_score_correction_bias.copy_(torch.linspace(0.0, 0.3, moe.gate.n_routed_experts, device=DEVICE))
    x = embeds(lm, 1, 40, seed=6)[0]
    idx, weight = moe.gate(x)
    expected = naive_gate(moe.gate, x)
    for i, route in enumerate(expected):
        got = dict(zip(idx[i].tolist(), weight[i].tolist()))
        assert got.keys() == route.keys()
        assert all(abs(got[e] - w) < 1e-6 for e, w in route.items())
    y = moe(x[None])[0]
    for i, route in enumerate(expected):
        ref = sum(w * moe.experts.expert(e, x[i]) for e, w in route.items()) + moe.shared_experts(x[i])
        assert (y[i] - ref).abs().max().item() < TOL


def test_noaux_tc_masks_other_groups_with_zero_not_minus_inf():
    config = LanguageConfig(**{**MLA, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1})
    gate = MoEGate(config)
    with torch.no_grad():
        gate.weight.zero_()  # every sigmoid score is 0.5
        gate.e_score_correction_bias.copy_(torch.tensor([0.0, -1.2, -2.0, -2.0]))
    idx, weight = gate(torch.zeros(1, config.hidden_size))
    # Biased scores 0.5, -0.7 | -1.5, -1.5: group 0 wins, yet its second expert (-0.7) loses to a masked 0.0 of group 1.
    assert sorted(idx[0].tolist())[0] == 0 and sorted(idx[0].tolist())[1] in (2, 3)
    assert torch.allclose(weight, torch.full((1, 2), 0.5 / 1.0 * 2.0))


# ----------------------------------------------------------------------------- whole checkpoint
def tiny_vl2_config(language: dict) -> dict:
    with open(FIXTURES / "model" / "config.json") as f:
        config = json.load(f)
    hidden = language["hidden_size"]
    config["vision_config"] = {
        "layers": 1,
        "heads": 2,
        "width": 32,
        "mlp_ratio": 2.0,
        "patch_size": 14,
        "model_name": "tiny",
    }
    config["projector_config"] = {"input_dim": 32, "n_embed": hidden}
    config["language_config"] = {**language, "vocab_size": 2000, "bos_token_id": 0, "eos_token_id": 1}
    return config


def write_checkpoint(directory: Path, config: dict, seed: int = 0) -> Path:
    """A complete model directory: the fixture's tokenizer/processor files, ``config``, random weights."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FIXTURES / "model" / name, directory / name)
    (directory / "config.json").write_text(json.dumps(config))
    model = randomize(DeepseekVL2Model(DeepseekVL2Config.from_dict(config)), seed)
    state = {k: v.contiguous().cpu() for k, v in model.state_dict().items()}
    state["vision.attn_pool.latent"] = torch.zeros(1, 1, 32)  # shipped but unused upstream
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def test_mla_noaux_checkpoint_through_the_public_api(tmp_path):
    language = {**MLA, "max_position_embeddings": 4096}
    directory = write_checkpoint(tmp_path / "tiny-mla", tiny_vl2_config(language), seed=7)
    runtime = DeepseekVL2.from_pretrained(directory, device=str(DEVICE), dtype=str(DTYPE).removeprefix("torch."))
    assert runtime.model.language.config.use_mla and runtime.context_length == 4096
    frames = [
        Image.open(FIXTURES / "cases" / n).convert("RGB") for n in ("bunny_t4.2_320x180.png", "bikes_t7.5_320x136.png")
    ]
    requests = [([frames[0]], "<image>\nDescribe."), (frames, "<image>\n<image>\nCompare the two frames."), ([], "Hi")]
    batched = runtime.describe_batch(requests, max_new_tokens=6)
    if EXACT:  # bfloat16 answers may differ after a near-tie
        assert batched == [runtime.describe(images, prompt, max_new_tokens=6) for images, prompt in requests]
    assert len(batched) == len(requests) and all(isinstance(t, str) for t in batched)


@torch.inference_mode()
def test_rows_without_budget_are_left_out_and_the_rest_match_alone(lm):
    # Per-row limits (a row near the end of the context gets fewer tokens); a row with none
    # never enters the prompt pass, and the padded rows left are prefilled one by one.
    lengths, limits = [11, 7, 5], [4, 0, 6]
    rows = [embeds(lm, 1, n, seed=20 + i) for i, n in enumerate(lengths)]
    x, mask = left_padded(rows)
    batched = generate(lm, x, mask, max_new_tokens=limits, eos_token_id=-1)
    assert batched.lengths == limits
    for i, (row, limit) in enumerate(zip(rows, limits)):
        if limit:
            single = generate(
                lm,
                row,
                torch.ones(1, row.shape[1], dtype=torch.bool, device=DEVICE),
                max_new_tokens=limit,
                eos_token_id=-1,
            )
            if EXACT:
                assert torch.equal(batched.sequences[i, :limit], single.sequences[0])
