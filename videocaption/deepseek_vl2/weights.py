"""Finding a checkpoint (hub id or local directory) and loading its safetensors strictly.

The official layout is ``config.json`` (model_type ``deepseek_vl_v2``), ``processor_config.json``,
``tokenizer.json`` (+ ``tokenizer_config.json``, ``special_tokens_map.json``) and the weights as
``model.safetensors`` or shards listed by ``model.safetensors.index.json``. Every parameter of the
module must come from the files and every tensor in the files must be used, with the documented
exception of the SigLIP attention-pooling head ``vision.attn_pool.*``, which DeepSeek-VL2 ships but
never runs (``ignore_head``). Anything else is a wrong or damaged checkpoint and raises
:class:`~videocaption.errors.ModelLoadError` naming the keys.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from videocaption.errors import ModelLoadError

from .language import Experts

UNUSED_PREFIXES = ("vision.attn_pool.",)  # present in the official checkpoints, unused by design
REQUIRED_FILES = ("config.json", "processor_config.json", "tokenizer.json")
INDEX_FILE = "model.safetensors.index.json"
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~")) and ".." not in name


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """Local directory of ``model``: an existing path as is, otherwise a hub id fetched with
    ``huggingface_hub.snapshot_download`` (json, safetensors and tokenizer files only)."""
    name = os.fspath(model)
    path = Path(name).expanduser()
    if path.exists() or isinstance(model, os.PathLike) or not _looks_like_hub_id(name):
        if not path.is_dir():
            raise ModelLoadError(f"Model directory '{name}' does not exist.")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # offline, not found, gated, network: all mean "cannot fetch"
        raise ModelLoadError(
            f"Model '{name}' could not be fetched from the Hugging Face hub ({type(exc).__name__}); "
            "check the id, the network or HF_HUB_OFFLINE, or pass a local directory."
        ) from exc


def weight_files(model_dir: Path, name: str) -> list[Path]:
    """The safetensors files of a checkpoint directory (from the shard index when there is one)."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"Model '{name}' has an unreadable {INDEX_FILE} ({exc}).") from exc
        files = [model_dir / f for f in dict.fromkeys(weight_map.values())]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"Model '{name}' has no safetensors weights in '{model_dir}'.")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(
            f"Model '{name}' is incomplete: weight file(s) {', '.join(missing)} missing in '{model_dir}'."
        )
    return files


def check_model_dir(model_dir: Path, name: str) -> list[Path]:
    """Raise ModelLoadError unless the directory has the official layout; return the weight files."""
    missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise ModelLoadError(f"Model '{name}' is incomplete: {', '.join(missing)} missing in '{model_dir}'.")
    return weight_files(model_dir, name)


def _describe(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_weights(
    module: nn.Module,
    files: list[Path],
    *,
    name: str,
    dtype: torch.dtype,
    device: torch.device,
    ignore_prefixes: tuple[str, ...] = UNUSED_PREFIXES,
    copy: bool = False,
) -> None:
    """Fill ``module`` (possibly on the meta device) from safetensors ``files``, strictly.

    Tensors are cast to ``dtype`` and placed on ``device`` one at a time, so a bf16 checkpoint never
    exists twice in memory; a routed expert's tensor is copied straight into its row of the
    layer's stacked storage (:class:`~videocaption.deepseek_vl2.language.Experts`). Missing keys,
    unexpected keys and shape mismatches raise ModelLoadError.

    ``copy``: copy every tensor out of its file even where no cast is needed (CPU, same dtype).
    Without it such a tensor is a view of the memory-mapped file, which is best when the weights
    are used as they are (the pages are the page cache, shared with other processes). When they
    are converted next (packed, int8), the views kept every file's mapping alive, and with it
    every page the conversion read: a process that had packed the full-size model held 12.5 GB
    resident instead of about 6.5 GB, for as long as it lived.
    """
    expected = {k: v for k, v in module.state_dict(keep_vars=True).items()}
    tied = {k for k in expected if _is_tied(module, k)}
    stacked = _stacked_slots(module)
    found: dict[str, torch.Tensor] = {}
    copied: set[str] = set()  # keys already written into stacked storage
    unexpected: list[str] = []
    load_device = "cpu" if device.type == "mps" else str(device)  # safetensors cannot map onto mps
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device=load_device) as f:
                for key in f.keys():
                    if key.startswith(ignore_prefixes):
                        continue
                    if key not in expected:
                        unexpected.append(key)
                        continue
                    shape = tuple(f.get_slice(key).get_shape())
                    if shape != tuple(expected[key].shape):
                        raise ModelLoadError(
                            f"Model '{name}' does not match the architecture: {key} has shape {shape}, "
                            f"expected {tuple(expected[key].shape)}."
                        )
                    if key in stacked:
                        owner, slot_key = stacked[key]
                        owner.materialize(device, dtype)
                        with torch.no_grad():
                            owner.slot(slot_key).copy_(f.get_tensor(key))
                        copied.add(key)
                    else:
                        stored = f.get_tensor(key)
                        tensor = stored.to(device=device, dtype=dtype)
                        found[key] = tensor.clone() if copy and tensor.data_ptr() == stored.data_ptr() else tensor
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"Model '{name}' has an unreadable weight file '{file.name}' ({exc}).") from exc
    missing = [k for k in expected if k not in found and k not in copied and k not in tied]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing keys {_describe(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_describe(unexpected)}")
        raise ModelLoadError(f"Model '{name}' does not match the architecture: {'; '.join(problems)}.")
    module.load_state_dict(found, strict=False, assign=True)
    _retie(module)
    leftovers = [n for n, p in module.named_parameters() if p.is_meta]
    if leftovers:
        raise ModelLoadError(f"Model '{name}' left parameters uninitialised: {_describe(leftovers)}.")


def _stacked_slots(module: nn.Module) -> dict[str, tuple[Experts, str]]:
    """Checkpoint key -> (stacked experts module, its key within that module) for every routed expert."""
    slots = {}
    for prefix, sub in module.named_modules():
        if isinstance(sub, Experts):
            slots.update({f"{prefix}.{key}": (sub, key) for key in sub.checkpoint_keys()})
    return slots


def _is_tied(module: nn.Module, key: str) -> bool:
    """lm_head.weight shares embed_tokens.weight when the config ties them (then it may be absent)."""
    language = getattr(module, "language", module)
    return key.endswith("lm_head.weight") and getattr(getattr(language, "config", None), "tie_word_embeddings", False)


def _retie(module: nn.Module) -> None:
    language = getattr(module, "language", module)
    if getattr(getattr(language, "config", None), "tie_word_embeddings", False):
        language.lm_head.weight = language.model.embed_tokens.weight


def replace_submodules(root: nn.Module, convert: Callable[[str, nn.Module], nn.Module | None]) -> None:
    """Replace each submodule for which ``convert(name, module)`` returns a new one, in place.

    Why not a loop over ``list(root.modules())``: that list keeps every replaced module (and its
    weights) alive until the loop ends, so converting a 6 GiB model to int8 held both copies at
    once and a 24 GiB machine ran out of memory. Here only names are listed up front, and each old
    module is dropped as soon as its replacement is in place.
    """
    for path in [name for name, _ in root.named_modules() if name]:
        parent_path, _, name = path.rpartition(".")
        try:
            parent = root.get_submodule(parent_path)
        except AttributeError:  # inside a module that was itself replaced
            continue
        child = getattr(parent, name, None)
        if not isinstance(child, nn.Module):
            continue
        new = convert(name, child)
        del child
        if new is not None:
            setattr(parent, name, new)
