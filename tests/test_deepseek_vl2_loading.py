"""Loading checkpoints: strict keys, sharded layout, clear errors, dtypes.

Expected sizes come from the checkpoint's own ``config.json``, so pointing ``PARITY_FIXTURES`` at
another checkpoint of the same layout checks that one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import FIXTURES
from safetensors.torch import load_file, save_file

from videocaption.backends import VisionLanguageModel
from videocaption.deepseek_vl2 import DeepseekVL2, DeepseekVL2Config
from videocaption.deepseek_vl2.generation import position_ids_from_mask
from videocaption.errors import ModelLoadError

MODEL = FIXTURES / "model"
PROMPT = "Write a short title for a video about a rabbit."
CONFIG = json.loads((MODEL / "config.json").read_text())  # as written, before our parsing
LANGUAGE = CONFIG["language_config"]


@pytest.fixture(scope="module")
def reference() -> DeepseekVL2:
    return DeepseekVL2.from_pretrained(MODEL, device="cpu", dtype="float32")


def copy_model(tmp_path: Path, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """The fixture model's files in a fresh directory, optionally with other weights."""
    directory = tmp_path / "model"
    shutil.copytree(MODEL, directory)
    if weights is not None:
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def fixture_weights() -> dict[str, torch.Tensor]:
    return load_file(str(MODEL / "model.safetensors"))


def text_logits(runtime: DeepseekVL2, prompt: str = PROMPT) -> torch.Tensor:
    """Logits of every prompt position for a text-only prompt."""
    batch = runtime._batch([([], prompt)]).to(runtime.device)
    with torch.inference_mode():
        embeds = runtime.model.prepare_inputs_embeds(batch.input_ids)
        positions = position_ids_from_mask(batch.attention_mask)
        return runtime.model.language(embeds, positions)


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    # Identical weights in other memory (mmap'd shards, other alignment) may take other SIMD
    # reduction orders, so "equal" means equal to float32 rounding noise.
    assert (a - b).abs().max().item() < tol


def test_fixture_loads_with_official_names(reference):
    assert reference.name == os.fspath(MODEL)
    assert reference.device == torch.device("cpu") and reference.dtype == torch.float32
    assert reference.context_length == LANGUAGE["max_position_embeddings"]
    assert isinstance(reference, VisionLanguageModel) and not reference.concurrent_calls
    names = set(reference.model.state_dict())
    file_keys = set(fixture_weights())
    # every file key is used except the documented unused SigLIP attention-pooling head
    assert file_keys - names == {k for k in file_keys if k.startswith("vision.attn_pool.")}
    assert names <= file_keys


def test_missing_key_is_an_error(tmp_path):
    weights = fixture_weights()
    # the last routed expert of the first MoE layer
    key = (
        f"language.model.layers.{LANGUAGE['first_k_dense_replace']}.mlp.experts."
        f"{LANGUAGE['n_routed_experts'] - 1}.up_proj.weight"
    )
    del weights[key]
    with pytest.raises(ModelLoadError, match=f"missing keys {re.escape(key)}"):
        DeepseekVL2.from_pretrained(copy_model(tmp_path, weights), device="cpu")


def test_unexpected_key_is_an_error(tmp_path):
    weights = fixture_weights()
    weights["language.model.layers.0.self_attn.q_norm.weight"] = torch.ones(LANGUAGE["hidden_size"])
    with pytest.raises(ModelLoadError, match=r"unexpected keys language\.model\.layers\.0\.self_attn\.q_norm\.weight"):
        DeepseekVL2.from_pretrained(copy_model(tmp_path, weights), device="cpu")


def test_shape_mismatch_is_an_error(tmp_path):
    weights = fixture_weights()
    width = CONFIG["projector_config"]["n_embed"]
    weights["image_newline"] = torch.zeros(width + 1)
    with pytest.raises(ModelLoadError, match=rf"image_newline has shape \({width + 1},\), expected \({width},\)"):
        DeepseekVL2.from_pretrained(copy_model(tmp_path, weights), device="cpu")


def test_attn_pool_keys_are_optional(tmp_path, reference):
    weights = {k: v for k, v in fixture_weights().items() if not k.startswith("vision.attn_pool.")}
    runtime = DeepseekVL2.from_pretrained(copy_model(tmp_path, weights), device="cpu")
    assert_close(text_logits(runtime), text_logits(reference))


def test_sharded_checkpoint_round_trip(tmp_path, reference):
    directory = copy_model(tmp_path)
    (directory / "model.safetensors").unlink()
    weights = fixture_weights()
    keys = sorted(weights)
    shards = [keys[i::3] for i in range(3)]  # interleaved, so every module spans several shards
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: weights[k] for k in shard}, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    index = {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in weights.values())},
        "weight_map": weight_map,
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    runtime = DeepseekVL2.from_pretrained(directory, device="cpu", dtype="float32")
    for name, tensor in runtime.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    assert_close(text_logits(runtime), text_logits(reference))
    assert runtime.complete(PROMPT, max_new_tokens=5) == reference.complete(PROMPT, max_new_tokens=5)

    (directory / weight_map[keys[0]]).unlink()
    with pytest.raises(ModelLoadError, match="incomplete.*model-00001-of-00003.safetensors"):
        DeepseekVL2.from_pretrained(directory, device="cpu")


def test_missing_directory(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model") as info:
        DeepseekVL2.from_pretrained(missing)
    assert str(info.value).count(".") <= 2  # one sentence (the path itself may hold a dot)
    with pytest.raises(ModelLoadError, match="no-such-model"):
        DeepseekVL2.from_pretrained(str(missing))


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "processor_config.json", "model.safetensors"])
def test_incomplete_directory(tmp_path, missing):
    directory = copy_model(tmp_path)
    (directory / missing).unlink()
    with pytest.raises(ModelLoadError, match=f"Model '{directory}'"):
        DeepseekVL2.from_pretrained(directory, device="cpu")


def test_bad_config(tmp_path):
    directory = copy_model(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    del config["tile_tag"]  # upstream's default "tile_tag" is not a valid tile tag
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="tile_tag must be '2D'"):
        DeepseekVL2.from_pretrained(directory, device="cpu")
    config["tile_tag"], config["model_type"] = "2D", "llava"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="deepseek_vl_v2"):
        DeepseekVL2.from_pretrained(directory, device="cpu")


def test_unknown_hub_id_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match="'deepseek-ai/no-such-model-for-tests'"):
        DeepseekVL2.from_pretrained("deepseek-ai/no-such-model-for-tests")


def test_config_defaults_follow_upstream_classes():
    config = DeepseekVL2Config.from_file(MODEL / "config.json")
    vision, projector = CONFIG["vision_config"], CONFIG["projector_config"]
    assert config.vision.image_size == vision.get("image_size", 384)
    assert config.vision.mlp_hidden == int(vision["width"] * vision["mlp_ratio"])  # timm's rounding
    # what the config leaves out takes upstream's defaults
    assert (
        config.projector.projector_type,
        config.projector.depth,
        config.projector.mlp_ratio,
        config.projector.downsample_ratio,
    ) == (
        projector.get("projector_type", "downsample_mlp_gelu"),
        projector.get("depth", 2),
        projector.get("mlp_ratio", 1),
        projector.get("downsample_ratio", 2),
    )
    lang = config.language
    defaults = {
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "scoring_func": "softmax",
        "routed_scaling_factor": 1.0,
        "norm_topk_prob": False,
        "moe_layer_freq": 1,
        "attention_bias": False,
    }
    assert {name: getattr(lang, name) for name in defaults} == {
        name: LANGUAGE.get(name, value) for name, value in defaults.items()
    }
    dense = LANGUAGE["first_k_dense_replace"]
    assert [lang.is_moe_layer(i) for i in range(LANGUAGE["num_hidden_layers"])] == [
        i >= dense and i % lang.moe_layer_freq == 0 for i in range(LANGUAGE["num_hidden_layers"])
    ]
    empty = DeepseekVL2Config(tile_tag="2D", projector=DeepseekVL2Config().projector)
    assert empty.language.use_mla and empty.language.kv_lora_rank == 512 and empty.language.q_lora_rank == 1536
    assert empty.vision.width == 1024 and empty.vision.patch_size == 16
    with pytest.raises(ValueError, match="tile_tag"):
        DeepseekVL2Config.from_dict({"model_type": "deepseek_vl_v2"})


def test_bfloat16_on_cpu_is_close_to_float32(reference):
    bf16 = DeepseekVL2.from_pretrained(MODEL, device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())
    ours, exact = text_logits(bf16), text_logits(reference)
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    assert (ours - exact).abs().max().item() < 0.1 * exact.abs().max().item()
    assert torch.nn.functional.cosine_similarity(ours, exact, dim=-1).min().item() > 0.999
    text = bf16.complete(PROMPT, max_new_tokens=8)
    assert isinstance(text, str) and text
