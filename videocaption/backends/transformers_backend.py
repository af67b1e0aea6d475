"""Any image-text-to-text model that transformers supports, run in this process.

The model and its processor come from transformers' auto classes, and each prompt is
wrapped by the model's own chat template, so one class serves Qwen2-VL, Idefics3/SmolVLM,
LLaVA, Gemma 3 and the rest: the template puts the family's image tokens where the
pipeline's placeholders were, and the processor expands them to the right count.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from videocaption.backends.devices import resolve_device, resolve_dtype
from videocaption.backends.grammar import GrammarTokenizer, GuideLogitsProcessor, JsonGuide, min_tokens
from videocaption.backends.messages import DEFAULT_MAX_IMAGE_SIDE, interleave, shrink
from videocaption.errors import ModelLoadError
from videocaption.events import grammar
from videocaption.usage import Answers, Usage

log = logging.getLogger("llm_caption")

# Used when the config names no context size; and the largest one believed: some configs
# advertise a million positions that no machine running this could fill.
DEFAULT_CONTEXT_LENGTH = 4096
MAX_CONTEXT_LENGTH = 131072


class TransformersVLM:
    """A transformers vision-language model behind the :class:`VisionLanguageModel` protocol.

    Args:
        model: the loaded ``AutoModelForImageTextToText`` model, in eval mode on its device.
        processor: its ``AutoProcessor`` (tokenizer, image processor and chat template).
        name: hub id or directory, recorded in result.json.
        max_image_side: frames are shrunk to this longest side before the processor sees them,
            which bounds the tokens an image can take (see :meth:`max_image_tokens`).
    """

    concurrent_calls = False  # one process, one device: batches are grouped into one call instead

    def __init__(self, model: Any, processor: Any, name: str, *, max_image_side: int = DEFAULT_MAX_IMAGE_SIDE) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.max_image_side = max_image_side
        self.context_length = _context_length(model.config)
        self._lock = threading.Lock()  # one generate() at a time: graphs may share this instance
        self._image_tokens: int | None = None
        self._grammar_tokenizer: GrammarTokenizer | None = None

    @classmethod
    def from_pretrained(
        cls, name: str, *, device: str = "auto", dtype: str = "auto", max_image_side: int = DEFAULT_MAX_IMAGE_SIDE
    ) -> TransformersVLM:
        """Load a checkpoint with ``AutoProcessor`` and ``AutoModelForImageTextToText``.

        Args:
            name: hub id or local directory.
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
            dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
            max_image_side: see the class.

        Raises:
            ModelLoadError: transformers cannot find or load the checkpoint, or it is no
                image-text-to-text model.
            InvalidOptionError: the device is not available.
        """
        try:
            from transformers import AutoModelForImageTextToText, AutoProcessor
        except ImportError as error:
            raise ModelLoadError(f"the transformers backend needs transformers>=5: {error}") from error
        target = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, target)
        try:
            processor = AutoProcessor.from_pretrained(name)
            model = AutoModelForImageTextToText.from_pretrained(name, dtype=torch_dtype)
        except (OSError, ValueError, KeyError, ImportError) as error:
            raise ModelLoadError(f"cannot load {name!r} as a transformers image-text-to-text model: {error}") from error
        if not hasattr(processor, "tokenizer") or getattr(processor, "chat_template", None) is None:
            raise ModelLoadError(f"{name!r} has no processor with a tokenizer and a chat template")
        model = model.to(target).eval()
        log.info("loaded %s with transformers on %s (%s)", name, target, torch_dtype)
        return cls(model, processor, name, max_image_side=max_image_side)

    # -- generation ---------------------------------------------------------------------------

    def describe_batch(
        self,
        requests: Sequence[tuple[Sequence[Image.Image], str]],
        *,
        max_new_tokens: int,
        json_schemas: Sequence[dict] | None = None,
    ) -> list[str]:
        """Answer image prompts in one padded, greedy ``generate`` call.

        ``json_schemas``: one per request; each answer then follows its schema (a logits
        processor applies the grammar, :mod:`~videocaption.backends.grammar`).

        Raises:
            ValueError: a prompt has more placeholders than images.
        """
        if not requests:
            return []
        texts = [self._chat_text(prompt, len(images)) for images, prompt in requests]
        images = [[image.convert("RGB") for image in request_images] for request_images, _ in requests]
        return self._generate(texts, images if any(images) else None, max_new_tokens, json_schemas)

    def min_events_tokens(self, schema: dict) -> int:
        """The least ``max_new_tokens`` with which every answer under ``schema`` is complete."""
        return min_tokens(self.grammar_tokenizer(), grammar(schema))

    def grammar_tokenizer(self) -> GrammarTokenizer:
        """The tokenizer as the grammar library sees it, built on first use (about a second)."""
        if self._grammar_tokenizer is None:
            config = self.model.config
            text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
            self._grammar_tokenizer = GrammarTokenizer.from_transformers(
                self.tokenizer,
                vocab_size=text_config.vocab_size,
                eos_token_id=self.model.generation_config.eos_token_id,
            )
        return self._grammar_tokenizer

    def complete_batch(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Answer text-only prompts in one padded, greedy ``generate`` call."""
        if not prompts:
            return []
        return self._generate([self._chat_text(prompt, 0) for prompt in prompts], None, max_new_tokens)

    def _generate(
        self,
        texts: list[str],
        images: list[list[Image.Image]] | None,
        max_new_tokens: int,
        json_schemas: Sequence[dict] | None = None,
    ) -> list[str]:
        """The answers, as :class:`~videocaption.usage.Answers` with each prompt's token counts."""
        # Left padding keeps every prompt's last token at the end, where generation continues.
        self.tokenizer.padding_side = "left"
        inputs = self.processor(text=texts, images=images, padding=True, add_special_tokens=False, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        for key, value in inputs.items():  # pixel values in the model's dtype; ids stay integers
            if torch.is_floating_point(value):
                inputs[key] = value.to(self.model.dtype)
        extra: dict[str, Any] = {}
        if json_schemas is not None:
            from transformers import LogitsProcessorList

            guide = JsonGuide(self.grammar_tokenizer(), [grammar(schema) for schema in json_schemas])
            prompt_length = inputs["input_ids"].shape[1]
            extra["logits_processor"] = LogitsProcessorList(
                [GuideLogitsProcessor(guide, prompt_length, max_new_tokens)]
            )
        with self._lock, torch.inference_mode():
            output = self.model.generate(
                **inputs,
                **extra,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id
                if self.tokenizer.pad_token_id is not None
                else self.tokenizer.eos_token_id,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return Answers(texts, self._usage(inputs, new_tokens))

    def _usage(self, inputs: Any, new_tokens: torch.Tensor) -> list[Usage]:
        """Each row's real prompt tokens (padding not counted), image tokens, and answer tokens up
        to its end-of-sequence (``generate`` pads finished rows with eos or pad ids)."""
        prompt = inputs["attention_mask"].sum(dim=1).tolist()
        image_id = _image_token_id(self.processor, self.model.config)
        images = (
            ((inputs["input_ids"] == image_id) & inputs["attention_mask"].bool()).sum(dim=1).tolist()
            if image_id is not None
            else [None] * len(prompt)
        )
        eos = self.model.generation_config.eos_token_id
        stop = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.pad_token_id}
        stop_ids = torch.tensor(
            sorted(t for t in stop if t is not None), dtype=new_tokens.dtype, device=new_tokens.device
        )
        stops = torch.isin(new_tokens, stop_ids)
        # tokens before the first stop; a row that never stopped counts them all
        generated = torch.where(stops.any(dim=1), stops.int().argmax(dim=1), new_tokens.shape[1]).tolist()
        return [
            Usage(prompt_tokens=p, generated_tokens=g, image_tokens=i) for p, g, i in zip(prompt, generated, images)
        ]

    def _chat_text(self, prompt: str, num_images: int) -> str:
        """The templated text: one image entry per placeholder, the generation prompt at the end."""
        content = [
            {"type": "image"} if isinstance(part, int) else {"type": "text", "text": part}
            for part in interleave(prompt, num_images)
        ]
        conversation = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    # -- sizes --------------------------------------------------------------------------------

    def count_tokens(self, prompt: str, image_sizes: Sequence[tuple[int, int]] = ()) -> int:
        """Exact: the templated prompt run through the processor with blank images of these sizes.

        Raises:
            ValueError: the prompt has more placeholders than there are image sizes.
        """
        text = self._chat_text(prompt, len(image_sizes))
        if not image_sizes:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        images = [self.prepare_image(Image.new("RGB", size), len(image_sizes)) for size in image_sizes]
        encoded = self.processor(text=[text], images=[images], add_special_tokens=False)
        return len(encoded["input_ids"][0])

    def max_image_tokens(self, num_images: int) -> int:
        """Tokens of the costliest frame shape at ``max_image_side``, times ``num_images``.

        Frames are shrunk to ``max_image_side`` first (:meth:`prepare_image`), so a square frame
        of that side or a 16:9 one either way round is the worst a processor can be given.
        """
        if self._image_tokens is None:
            side, short = self.max_image_side, self.max_image_side * 9 // 16
            base = self.count_tokens("")
            self._image_tokens = max(
                self.count_tokens("", [size]) - base for size in ((side, side), (side, short), (short, side))
            )
        return num_images * self._image_tokens

    def prepare_image(self, image: Image.Image, num_images: int) -> Image.Image:
        """Frames shrunk to ``max_image_side``; processors resize again to their own sizes."""
        return shrink(image, self.max_image_side)


def _image_token_id(processor: Any, config: Any) -> int | None:
    """The id the processor repeats for every image token, where the family names one."""
    for source, name in ((processor, "image_token_id"), (config, "image_token_id"), (config, "image_token_index")):
        value = getattr(source, name, None)
        if isinstance(value, int):
            return value
    return None


def _context_length(config: Any) -> int:
    """The text model's ``max_position_embeddings``, capped at :data:`MAX_CONTEXT_LENGTH`."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    length = getattr(text_config, "max_position_embeddings", None) or getattr(config, "max_position_embeddings", None)
    if not isinstance(length, int) or length <= 0:
        return DEFAULT_CONTEXT_LENGTH
    return min(length, MAX_CONTEXT_LENGTH)
