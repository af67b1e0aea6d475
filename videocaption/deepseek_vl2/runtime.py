"""The small API the captioning pipeline uses: load once, then describe images / complete text.

Everything here is glue: the processor makes the batch, the model embeds it, ``generate`` decodes
greedily and the tokenizer turns ids back into text. All requests of one call go through one
left-padded batch; padding is masked and positions are per row, so an answer does not depend on
what else is in the batch.
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

import torch
from PIL import Image, ImageOps

from ..errors import ContextOverflowError, InvalidOptionError, ModelLoadError
from .config import DeepseekVL2Config
from .generation import generate
from .model import DeepseekVL2Model
from .processor import DeepseekVL2Batch, DeepseekVL2Processor, select_best_resolution
from .weights import check_model_dir, load_weights, resolve_model_dir

DEFAULT_MODEL = "deepseek-ai/deepseek-vl2-tiny"
# Tokens kept free for the prompt text and the answer when two frames share a prompt.
PAIR_TEXT_RESERVE = 512
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" = cuda, then mps, then cpu; otherwise the named device, which must be available."""
    if isinstance(device, torch.device):
        choice = device
    elif device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            choice = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidOptionError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if choice.type == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionError(f"device {str(choice)!r} was requested but CUDA is not available")
    if choice.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidOptionError("device 'mps' was requested but MPS is not available")
    if choice.type not in ("cpu", "cuda", "mps"):
        raise InvalidOptionError(f"unsupported device {str(choice)!r} (use auto, cpu, cuda, cuda:N or mps)")
    return choice


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" = bfloat16 on CUDA, float32 elsewhere; or float32 / bfloat16 / float16."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InvalidOptionError(f"unsupported dtype {dtype} (use float32, bfloat16 or float16)")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InvalidOptionError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return DTYPES[dtype]


class DeepseekVL2:
    """A loaded DeepSeek-VL2 checkpoint with greedy ``describe`` / ``complete`` calls."""

    concurrent_calls = False  # one process, one device: batches are grouped into one call instead

    def __init__(
        self,
        name: str,
        model: DeepseekVL2Model,
        processor: DeepseekVL2Processor,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.name = name
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.config: DeepseekVL2Config = model.config
        self.context_length: int = self.config.language.max_position_embeddings
        self._lock = threading.Lock()  # one generate at a time per instance (shared across graphs)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
    ) -> "DeepseekVL2":
        """Load from a hub id (``deepseek-ai/deepseek-vl2-tiny``, ``-small``, ``deepseek-vl2``) or a
        local directory with the official layout. Raises ModelLoadError if it cannot."""
        name = os.fspath(model)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        model_dir = resolve_model_dir(model)
        files = check_model_dir(model_dir, name)
        try:
            config = DeepseekVL2Config.from_file(model_dir / "config.json")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Model '{name}' has an unusable config.json: {exc}.") from exc
        try:
            processor = DeepseekVL2Processor.from_pretrained(model_dir)
        except (OSError, ValueError, KeyError, Exception) as exc:
            raise ModelLoadError(f"Model '{name}' has unusable tokenizer/processor files: {exc}.") from exc
        if processor.config.image_size != config.vision.image_size:
            raise ModelLoadError(
                f"Model '{name}' is inconsistent: processor tiles are {processor.config.image_size} px "
                f"but the vision tower expects {config.vision.image_size} px."
            )
        with torch.device("meta"):
            net = DeepseekVL2Model(config)
        load_weights(net, files, name=name, dtype=torch_dtype, device=torch_device)
        net.eval().requires_grad_(False)
        return cls(name, net, processor, device=torch_device, dtype=torch_dtype)

    def __repr__(self) -> str:
        return f"DeepseekVL2({self.name!r}, device={self.device}, dtype={self.dtype})"

    # ------------------------------------------------------------------ public
    def describe(self, images: Sequence[Image.Image], prompt: str, *, max_new_tokens: int = 256) -> str:
        """Answer one user message that has one ``<image>`` placeholder per image."""
        return self.describe_batch([(images, prompt)], max_new_tokens=max_new_tokens)[0]

    def describe_batch(
        self, requests: Sequence[tuple[Sequence[Image.Image], str]], *, max_new_tokens: int = 256
    ) -> list[str]:
        """Answer several independent image prompts in one padded generate call."""
        requests = [(list(images), prompt) for images, prompt in requests]
        for images, prompt in requests:
            self._check_placeholders(prompt, len(images))
        return self._generate(requests, max_new_tokens)

    def complete(self, prompt: str, *, max_new_tokens: int = 256) -> str:
        """Answer one text-only user message."""
        return self.complete_batch([prompt], max_new_tokens=max_new_tokens)[0]

    def complete_batch(self, prompts: Sequence[str], *, max_new_tokens: int = 256) -> list[str]:
        """Answer several text-only user messages in one padded generate call."""
        for prompt in prompts:
            self._check_placeholders(prompt, 0)
        return self._generate([([], prompt) for prompt in prompts], max_new_tokens)

    def count_tokens(self, prompt: str, image_sizes: Sequence[tuple[int, int]] = ()) -> int:
        """Prompt tokens (bos + template + image tokens) for images of these (width, height) sizes."""
        self._check_placeholders(prompt, len(image_sizes))
        return self.processor.count_tokens(self.processor.user_conversation(prompt), image_sizes)

    def max_image_tokens(self, num_images: int) -> int:
        """Worst-case image tokens of ``num_images`` images of unknown size in one prompt,
        once each went through :meth:`prepare_image`."""
        if num_images == 2:
            return 2 * max(self._tiling_tokens(size) for size in self._pair_tilings())
        return self.processor.max_image_tokens(num_images)

    def prepare_image(self, image: Image.Image, num_images: int) -> Image.Image:
        """``image`` made ready for a prompt of ``num_images`` images, as small as it can be.

        More than two images: every image becomes a global and a local view padded to one
        tile; shrinking it to fit one tile now, with the processor's own resize, gives
        identical pixels later (the processor's resize to the same size is a copy), so a 4K
        frame is not kept at full size while its batch waits.

        Two images: the processor tiles each at up to 3x3 tiles, and two such frames overflow
        the context of the tiny model (so batch_size 2 could never run). A frame whose tiling
        would be larger than :meth:`_pair_tilings` allows is shrunk to fit the best allowed
        tiling; the processor then picks that tiling or a smaller one. Other frames, and
        single images, are kept as they are.
        """
        tile = self.processor.config.image_size
        if num_images == 2:
            allowed = self._pair_tilings()
            if select_best_resolution(image.size, self.processor.config.candidate_resolutions) in allowed:
                return image
            target = select_best_resolution(image.size, allowed)
            return ImageOps.contain(image.convert("RGB"), target, method=Image.Resampling.BICUBIC)
        if num_images < 2 or (image.width <= tile and image.height <= tile):
            return image
        # The processor converts to RGB before resizing; resizing first (e.g. RGBA, which PIL
        # resizes with premultiplied alpha) would give other pixels.
        return ImageOps.contain(image.convert("RGB"), (tile, tile), method=Image.Resampling.BICUBIC)

    def _tiling_tokens(self, size: tuple[int, int]) -> int:
        tile = self.processor.config.image_size
        return self.processor.num_image_tokens(size[0] // tile, size[1] // tile)

    def _pair_tilings(self) -> list[tuple[int, int]]:
        """Candidate tilings for two-image prompts: those of up to as many tiles as lets two
        frames of any of them fit the context with ``PAIR_TEXT_RESERVE`` tokens to spare.

        Bounded by tile count, not tokens: the processor may pick a different shape of the
        same or smaller area for a shrunk frame, and every such shape is then allowed too.
        """
        tile = self.processor.config.image_size
        candidates = [tuple(c) for c in self.processor.config.candidate_resolutions]
        budget = (self.context_length - PAIR_TEXT_RESERVE) // 2
        for max_tiles in sorted({w * h // (tile * tile) for w, h in candidates}, reverse=True):
            allowed = [c for c in candidates if c[0] * c[1] // (tile * tile) <= max_tiles]
            if max(self._tiling_tokens(c) for c in allowed) <= budget:
                return allowed
        return [(tile, tile)]

    # ---------------------------------------------------------------- helpers
    def _check_placeholders(self, prompt: str, num_images: int) -> None:
        token = self.processor.config.image_token
        found = prompt.count(token)
        if found != num_images:
            raise ValueError(f"the prompt has {found} {token} placeholder(s) but {num_images} image(s) were given")

    def _batch(self, requests: list[tuple[list[Image.Image], str]]) -> DeepseekVL2Batch:
        samples = [
            self.processor.process_one(self.processor.user_conversation(prompt), images)
            for images, prompt in requests
        ]
        for sample in samples:
            if len(sample) > self.context_length:
                raise ContextOverflowError(
                    f"The prompt needs {len(sample)} tokens but the model's context length is {self.context_length}."
                )
        return self.processor.batchify(samples)

    def _generate(self, requests: list[tuple[list[Image.Image], str]], max_new_tokens: int) -> list[str]:
        if not requests:
            return []
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        batch = self._batch(requests)
        # prompt + answer must fit the context, row by row (batching must not shorten answers)
        budgets = [min(max_new_tokens, self.context_length - n) for n in batch.seq_lens]
        with self._lock, torch.inference_mode():
            batch = batch.to(self.device, dtype=self.dtype)
            embeds = self.model.prepare_inputs_embeds(
                batch.input_ids, batch.images, batch.images_seq_mask, batch.images_spatial_crop
            )
            out = generate(
                self.model.language,
                embeds,
                batch.attention_mask,
                max_new_tokens=budgets,
                eos_token_id=self.processor.eos_id,
                pad_token_id=self.processor.eos_id,
            )
        ids = out.sequences.tolist()
        return [self.processor.decode(row[:n]).strip() for row, n in zip(ids, out.lengths)]
