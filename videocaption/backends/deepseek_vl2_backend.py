"""The default backend: DeepSeek-VL2 in this process, run by :mod:`videocaption.deepseek_vl2`.

Load once, then describe images / complete text. Everything here is glue: the processor makes
the batch, the model embeds it, ``generate`` decodes greedily and the tokenizer turns ids back
into text. All requests of one call go through one
left-padded batch; padding is masked and positions are per row, so an answer does not depend on
what else is in the batch.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence

import torch
from PIL import Image

from videocaption.backends.devices import resolve_device, resolve_dtype
from videocaption.backends.grammar import GrammarTokenizer, JsonGuide, min_tokens
from videocaption.deepseek_vl2.config import DeepseekVL2Config
from videocaption.deepseek_vl2.generation import generate
from videocaption.deepseek_vl2.model import DeepseekVL2Model
from videocaption.deepseek_vl2.packing import pack_network_for_cpu, packing_supported
from videocaption.deepseek_vl2.processor import DeepseekVL2Batch, DeepseekVL2Processor
from videocaption.deepseek_vl2.quantize import quantize_language_int8
from videocaption.deepseek_vl2.threads import run_on_model_thread
from videocaption.deepseek_vl2.weights import check_model_dir, load_weights, resolve_model_dir
from videocaption.errors import ContextOverflowError, ModelLoadError
from videocaption.events import grammar
from videocaption.options import DEFAULT_MODEL
from videocaption.usage import Answers, Usage


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
        self.geometry = processor.geometry  # from processor_config.json; the context from config.json
        self._lock = threading.Lock()  # one generate at a time per instance (shared across graphs)
        self._grammar_tokenizer: GrammarTokenizer | None = None
        self._last_image_features: tuple[str, torch.Tensor] | None = None  # see _image_features
        self.last_guide: JsonGuide | None = None  # the grammar of the last constrained call (benchmarks read it)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        pack_cpu_weights: bool = True,
    ) -> DeepseekVL2:
        """Load from a hub id (``deepseek-ai/deepseek-vl2-tiny``, ``-small``, ``deepseek-vl2``) or a
        local directory with the official layout. Raises ModelLoadError if it cannot.

        ``dtype="int8"`` (CPU only) loads in bfloat16, then stores the decoder's linears, lm_head and
        routed experts as int8 (see :mod:`~videocaption.deepseek_vl2.quantize`). bfloat16 weights on
        a CPU are packed into oneDNN's layout unless ``pack_cpu_weights`` is false (see
        :mod:`~videocaption.deepseek_vl2.packing`; false keeps the portable layout GPUs run)."""
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
        int8 = dtype == "int8"
        if int8 and torch_device.type != "cpu":
            raise ModelLoadError(f"dtype int8 is a CPU option (device {torch_device}); use bfloat16 there.")
        pack = pack_cpu_weights and packing_supported(torch_device, torch_dtype)
        net = run_on_model_thread(cls._load_network, config, files, name, torch_dtype, torch_device, int8, pack)
        return cls(name, net, processor, device=torch_device, dtype=torch_dtype)

    @staticmethod
    def _load_network(
        config: DeepseekVL2Config,
        files,
        name: str,
        dtype: torch.dtype,
        device: torch.device,
        int8: bool = False,
        pack: bool = False,
    ) -> DeepseekVL2Model:
        # On the model thread (see deepseek_vl2.threads): the casts while loading are parallel
        # torch ops too, and any thread that runs one keeps an OpenMP pool.
        with torch.device("meta"):
            net = DeepseekVL2Model(config)
        load_weights(net, files, name=name, dtype=dtype, device=device, copy=int8 or pack)  # converted next
        if int8:
            quantize_language_int8(net.language, dtype)
        if pack:
            pack_network_for_cpu(net)
        return net.eval().requires_grad_(False)

    def __repr__(self) -> str:
        return f"DeepseekVL2({self.name!r}, device={self.device}, dtype={self.dtype})"

    # ------------------------------------------------------------------ public
    def describe(self, images: Sequence[Image.Image], prompt: str, *, max_new_tokens: int = 256) -> str:
        """Answer one user message that has one ``<image>`` placeholder per image."""
        return self.describe_batch([(images, prompt)], max_new_tokens=max_new_tokens)[0]

    def describe_batch(
        self,
        requests: Sequence[tuple[Sequence[Image.Image], str]],
        *,
        max_new_tokens: int = 256,
        json_schemas: Sequence[dict] | None = None,
    ) -> list[str]:
        """Answer several independent image prompts in one padded generate call.

        ``json_schemas``: one per request; each answer is then a JSON document valid against its
        schema, complete within ``max_new_tokens`` when that is at least
        :meth:`min_events_tokens` (constrained decoding, :mod:`~videocaption.backends.grammar`).
        """
        requests = [(list(images), prompt) for images, prompt in requests]
        for images, prompt in requests:
            self._check_placeholders(prompt, len(images))
        if json_schemas is not None and len(json_schemas) != len(requests):
            raise ValueError(f"{len(json_schemas)} schemas for {len(requests)} requests")
        return self._generate(requests, max_new_tokens, json_schemas)

    def min_events_tokens(self, schema: dict) -> int:
        """The least ``max_new_tokens`` with which every answer under ``schema`` is complete."""
        return min_tokens(self.grammar_tokenizer(), grammar(schema))

    def grammar_tokenizer(self) -> GrammarTokenizer:
        """The tokenizer as the grammar library sees it, built on first use."""
        if self._grammar_tokenizer is None:
            self._grammar_tokenizer = GrammarTokenizer.from_tokenizers_json(
                self.processor.tokenizer.to_str(),
                vocab_size=self.config.language.vocab_size,
                eos_token_id=self.processor.eos_id,
            )
        return self._grammar_tokenizer

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
        return self.geometry.max_image_tokens(num_images, self.context_length)

    def prepare_image(self, image: Image.Image, num_images: int) -> Image.Image:
        """``image`` made ready for a prompt of ``num_images`` images, as small as it can be
        (see :meth:`ImageGeometry.prepare_image <videocaption.deepseek_vl2.geometry.ImageGeometry.prepare_image>`:
        one tile each with three or more, a tiling that lets both fit the context with two)."""
        return self.geometry.prepare_image(image, num_images, self.context_length)

    def forget_image_features(self) -> None:
        """Drop the last call's image features (see :meth:`_image_features`): the next call about
        those frames runs the vision tower again, as timing the same call twice needs."""
        self._last_image_features = None

    # ---------------------------------------------------------------- helpers
    def _image_features(self, batch: DeepseekVL2Batch, tiles: str | None) -> torch.Tensor | None:
        """The vision tower's features of the batch's tiles; the previous call's when its tiles
        were the very same (``tiles``: :func:`tiles_digest`), None for a text-only batch.

        Why: with ``events`` each batch is asked twice about the same frames (its description,
        then its events), and the vision tower is most of a prompt's cost (19 of 26 s for 4 frames
        of the full-size model on 2 CPU cores). Only the last call's features are kept (a few MB).
        """
        if tiles is None:
            return None
        if self._last_image_features is not None and self._last_image_features[0] == tiles:
            return self._last_image_features[1]
        features = self.model.encode_images(batch.images, batch.images_spatial_crop)
        self._last_image_features = (tiles, features)
        return features

    def _check_placeholders(self, prompt: str, num_images: int) -> None:
        token = self.processor.config.image_token
        found = prompt.count(token)
        if found != num_images:
            raise ValueError(f"the prompt has {found} {token} placeholder(s) but {num_images} image(s) were given")

    def _batch(self, requests: list[tuple[list[Image.Image], str]]) -> DeepseekVL2Batch:
        samples = [
            self.processor.process_one(self.processor.user_conversation(prompt), images) for images, prompt in requests
        ]
        for sample in samples:
            if len(sample) > self.context_length:
                raise ContextOverflowError(
                    f"The prompt needs {len(sample)} tokens but the model's context length is {self.context_length}."
                )
        return self.processor.batchify(samples)

    def _generate(
        self,
        requests: list[tuple[list[Image.Image], str]],
        max_new_tokens: int,
        json_schemas: Sequence[dict] | None = None,
    ) -> list[str]:
        """The answers, as :class:`~videocaption.usage.Answers` with each request's token counts.

        Runs on the process's one model thread whichever thread calls (see
        :mod:`~videocaption.deepseek_vl2.threads`): the processor's tensor work included.
        """
        if not requests:
            return Answers([], [])
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        return run_on_model_thread(self._generate_here, requests, max_new_tokens, json_schemas)

    def _generate_here(
        self,
        requests: list[tuple[list[Image.Image], str]],
        max_new_tokens: int,
        json_schemas: Sequence[dict] | None = None,
    ) -> list[str]:
        batch = self._batch(requests)
        guide = None
        if json_schemas is not None:
            guide = JsonGuide(self.grammar_tokenizer(), [grammar(schema) for schema in json_schemas])
            self.last_guide = guide
        # prompt + answer must fit the context, row by row (batching must not shorten answers)
        budgets = [min(max_new_tokens, self.context_length - n) for n in batch.seq_lens]
        with self._lock, torch.inference_mode():
            tiles = tiles_digest(batch)
            batch = batch.to(self.device, dtype=self.dtype)
            embeds = self.model.prepare_inputs_embeds(
                batch.input_ids,
                batch.images,
                batch.images_seq_mask,
                batch.images_spatial_crop,
                image_embeds=self._image_features(batch, tiles),
            )
            out = generate(
                self.model.language,
                embeds,
                batch.attention_mask,
                max_new_tokens=budgets,
                eos_token_id=self.processor.eos_id,
                pad_token_id=self.processor.eos_id,
                guide=guide,
            )
        ids = out.sequences.tolist()
        texts = [self.processor.decode(row[:n]).strip() for row, n in zip(ids, out.lengths)]
        usage = [
            Usage(prompt_tokens=length, generated_tokens=n, image_tokens=sum(images))
            for length, n, images in zip(batch.seq_lens, out.lengths, batch.num_image_tokens)
        ]
        return Answers(texts, usage)


def tiles_digest(batch: DeepseekVL2Batch) -> str | None:
    """A digest of a batch's image tiles and their layout (None: no images), to recognise a call
    about the same frames. Content, not identity: equal digests mean equal vision inputs."""
    if batch.images is None or not bool(batch.images_spatial_crop.any()):
        return None
    digest = hashlib.blake2b(digest_size=16)
    for tensor in (batch.images_spatial_crop, batch.images):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy() if data.dtype == torch.bfloat16 else data.numpy())
    return digest.hexdigest()
