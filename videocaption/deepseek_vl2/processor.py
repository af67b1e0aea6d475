"""Prompt, tokens and pixel tiles, as the upstream ``DeepseekVLV2Processor`` makes them.

A conversation becomes ``bos`` + the ``deepseek`` template text, split on ``<image>``; every
image placeholder expands to the image tokens of one global 384x384 view plus a grid of local
384x384 tiles (the best fit among ``candidate_resolutions``, see :mod:`.geometry`), and the pixels of those views are
returned as normalised tiles. The tokenizer is read with the ``tokenizers`` library straight from
``tokenizer.json`` (upstream wraps the same file as ``LlamaTokenizerFast``, which gives the same
ids for ``add_special_tokens=False``).

Quirks kept on purpose (they decide which ids the model sees):

* the image tiling is chosen with ``int()`` truncation, ties going to the candidate that wastes
  less area (:func:`.geometry.select_best_resolution`);
* letterbox padding uses colour ``int(0.5 * 255) = 127``;
* with more than two images in a conversation there is no tiling, yet each image still gets a
  global view *and* one local 384x384 tile (the same picture twice);
* the empty assistant turn appends ``eos``, which inference mode removes again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from tokenizers import AddedToken, Tokenizer

from .geometry import ImageGeometry

IMAGE_TOKEN = "<image>"
GROUNDING_TOKENS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>")
USER_ROLE, ASSISTANT_ROLE = "<|User|>", "<|Assistant|>"
SEP, SEP2 = "\n\n", "<｜end▁of▁sentence｜>"  # the "deepseek" conversation template


@dataclass(frozen=True)
class ProcessorConfig:
    """``processor_config.json`` (arguments of ``DeepseekVLV2Processor``)."""

    candidate_resolutions: tuple[tuple[int, int], ...]
    patch_size: int
    downsample_ratio: int
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    normalize: bool = True
    image_token: str = IMAGE_TOKEN
    pad_token: str = "<｜▁pad▁｜>"
    add_special_token: bool = False
    sft_format: str = "deepseek"
    mask_prompt: bool = True
    ignore_id: int = -100

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessorConfig:
        try:
            config = cls(
                candidate_resolutions=tuple((int(w), int(h)) for w, h in data["candidate_resolutions"]),
                patch_size=int(data["patch_size"]),
                downsample_ratio=int(data["downsample_ratio"]),
                image_mean=tuple(float(x) for x in data.get("image_mean", (0.5, 0.5, 0.5))),
                image_std=tuple(float(x) for x in data.get("image_std", (0.5, 0.5, 0.5))),
                normalize=bool(data.get("normalize", True)),
                image_token=data.get("image_token", IMAGE_TOKEN),
                pad_token=data.get("pad_token", "<｜▁pad▁｜>"),
                add_special_token=bool(data.get("add_special_token", False)),
                sft_format=data.get("sft_format", "deepseek"),
                mask_prompt=bool(data.get("mask_prompt", True)),
                ignore_id=int(data.get("ignore_id", -100)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed processor config: {exc!r}") from exc
        if config.sft_format != "deepseek":
            raise ValueError(f"sft_format {config.sft_format!r} is not supported (only 'deepseek')")
        if not config.candidate_resolutions:
            raise ValueError("candidate_resolutions must not be empty")
        return config

    @property
    def geometry(self) -> ImageGeometry:
        """Tiles and image tokens, as these settings make them."""
        return ImageGeometry(self.candidate_resolutions, self.patch_size, self.downsample_ratio)

    @property
    def image_size(self) -> int:
        """Side of every tile: upstream takes the first candidate's width."""
        return self.geometry.tile

    @property
    def tokens_per_side(self) -> int:
        """Image tokens per tile side after the projector's downsampling: ceil(27 / 2) = 14."""
        return self.geometry.tokens_per_side


@dataclass
class ProcessedConversation:
    """One conversation, unpadded (upstream ``VLChatProcessorOutput``)."""

    sft_format: str
    input_ids: torch.Tensor  # [T] int64
    target_ids: torch.Tensor  # [T] int64
    images: torch.Tensor  # [n_tiles, 3, S, S] float32 (one zero tile if no image)
    images_seq_mask: torch.Tensor  # [T] bool
    images_spatial_crop: torch.Tensor  # [n_images, 2] int64 (width_tiles, height_tiles); [[0, 0]] if none
    num_image_tokens: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class DeepseekVL2Batch:
    """Left-padded batch of conversations (upstream ``BatchCollateOutput``)."""

    sft_format: list[str]
    input_ids: torch.Tensor  # [B, T] int64, pad id on the left
    labels: torch.Tensor  # [B, T] int64, ignore_id on images and padding
    images: torch.Tensor  # [B, max_tiles, 3, S, S] float32, zero tiles pad each row
    attention_mask: torch.Tensor  # [B, T] bool, False on padding
    images_seq_mask: torch.Tensor  # [B, T] bool, True where an image embedding goes
    images_spatial_crop: torch.Tensor  # [B, max_images, 2] int64, zero rows pad
    seq_lens: list[int]
    num_image_tokens: list[list[int]] = field(default_factory=list)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> DeepseekVL2Batch:
        """Move the tensors (and cast the pixels to ``dtype`` if given)."""
        self.input_ids = self.input_ids.to(device)
        self.labels = self.labels.to(device)
        self.attention_mask = self.attention_mask.to(device)
        self.images_seq_mask = self.images_seq_mask.to(device)
        self.images_spatial_crop = self.images_spatial_crop.to(device)
        self.images = self.images.to(device=device, dtype=dtype or self.images.dtype)
        return self


def _special_token_content(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens either as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class DeepseekVL2Processor:
    """Turns conversations with PIL images into model inputs; see the module docstring."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        config: ProcessorConfig,
        *,
        bos_token: str,
        eos_token: str,
        pad_token: str | None = None,
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.geometry = config.geometry
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        # Upstream registers these as special tokens; the official tokenizer already has them all,
        # in which case adding is a no-op, otherwise they get new ids exactly as upstream's would.
        wanted = [pad_token or config.pad_token, config.image_token, *GROUNDING_TOKENS, USER_ROLE, ASSISTANT_ROLE]
        missing = [t for t in wanted if tokenizer.token_to_id(t) is None]
        if missing:
            tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self.bos_id = self._require_id(bos_token)
        self.eos_id = self._require_id(eos_token)
        self.pad_id = self._require_id(pad_token or config.pad_token)
        self.image_token_id = self._require_id(config.image_token)

    def _require_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the tokenizer")
        return token_id

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> DeepseekVL2Processor:
        """Read ``tokenizer.json``, ``tokenizer_config.json`` (optional) and ``processor_config.json``."""
        path = Path(path)
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        with open(path / "processor_config.json", encoding="utf-8") as f:
            config = ProcessorConfig.from_dict(json.load(f))
        tok_config: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
            if (path / name).is_file():
                with open(path / name, encoding="utf-8") as f:
                    tok_config.update(json.load(f))
        bos = _special_token_content(tok_config.get("bos_token")) or "<｜begin▁of▁sentence｜>"
        eos = _special_token_content(tok_config.get("eos_token")) or "<｜end▁of▁sentence｜>"
        pad = _special_token_content(tok_config.get("pad_token"))
        return cls(
            tokenizer,
            config,
            bos_token=bos,
            eos_token=eos,
            pad_token=pad,
            clean_up_tokenization_spaces=bool(tok_config.get("clean_up_tokenization_spaces", False)),
        )

    # ----------------------------------------------------------------- text
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos/eos (``tokenizer.encode(text, add_special_tokens=False)``)."""
        if not text:
            return []
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces:  # transformers' clean_up_tokenization
            for a, b in (
                (" .", "."),
                (" ?", "?"),
                (" !", "!"),
                (" ,", ","),
                (" ' ", "'"),
                (" n't", "n't"),
                (" 'm", "'m"),
                (" 's", "'s"),
                (" 've", "'ve"),
                (" 're", "'re"),
            ):
                text = text.replace(a, b)
        return text

    @staticmethod
    def format_turn(role: str, content: str, system_prompt: str = "") -> str:
        """One round of the ``deepseek`` template: ``<|User|>: {content}\\n\\n<|Assistant|>:``."""
        text = system_prompt + SEP if system_prompt else ""
        text += f"{role}: {content}{SEP}" if content else f"{role}:"
        return text + f"{ASSISTANT_ROLE}:"

    @staticmethod
    def format_messages(conversation: Sequence[dict[str, Any]], system_prompt: str = "") -> str:
        """The whole conversation as one string (upstream ``sft_format``, informational)."""
        text = system_prompt + SEP if system_prompt else ""
        for i, message in enumerate(conversation):
            content = str(message["content"]).strip()
            text += f"{message['role']}: {content}{(SEP, SEP2)[i % 2]}" if content else f"{message['role']}:"
        return text.strip()

    # --------------------------------------------------------------- images
    def image_grid(self, size: tuple[int, int], cropping: bool) -> tuple[int, int]:
        """(width_tiles, height_tiles) of the local view of an image of ``size`` (width, height)."""
        return self.geometry.tiling(size, cropping)

    def num_image_tokens(self, width_tiles: int, height_tiles: int) -> int:
        """Image tokens of a global view plus a local grid of this many tiles."""
        return self.geometry.tiling_tokens(width_tiles, height_tiles)

    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        """ToTensor + Normalize as torchvision does them: uint8 HWC -> float CHW / 255, (x - mean) / std."""
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        x = x.to(torch.float32).div(255)
        if self.config.normalize:
            mean = torch.tensor(self.config.image_mean, dtype=torch.float32)[:, None, None]
            std = torch.tensor(self.config.image_std, dtype=torch.float32)[:, None, None]
            x = x.sub(mean).div(std)
        return x

    def image_tiles(self, image: Image.Image, cropping: bool) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """The global view then the local tiles (row-major) of one image, and its tile grid."""
        image = image.convert("RGB")
        tile = self.config.image_size
        width_tiles, height_tiles = self.image_grid(image.size, cropping)
        color = tuple(int(x * 255) for x in self.config.image_mean)
        tiles = [self._to_tensor(ImageOps.pad(image, (tile, tile), color=color))]
        local = ImageOps.pad(image, (width_tiles * tile, height_tiles * tile), color=color)
        for y in range(0, height_tiles * tile, tile):
            for x in range(0, width_tiles * tile, tile):
                tiles.append(self._to_tensor(local.crop((x, y, x + tile, y + tile))))
        return tiles, (width_tiles, height_tiles)

    # ------------------------------------------------------------ sequences
    def _tokenize_with_images(
        self, text: str, images: Sequence[Image.Image] | None, sizes: Sequence[tuple[int, int]], cropping: bool
    ) -> tuple[list[int], list[bool], list[torch.Tensor], list[list[int]], list[int]]:
        """Ids and image mask of ``text`` with each ``<image>`` expanded; pixels if ``images`` given."""
        splits = text.split(self.config.image_token)
        if len(splits) - 1 != len(sizes):
            raise ValueError(
                f"the prompt has {len(splits) - 1} {self.config.image_token} placeholders but {len(sizes)} images"
            )
        ids: list[int] = []
        mask: list[bool] = []
        tiles: list[torch.Tensor] = []
        crops: list[list[int]] = []
        counts: list[int] = []
        for i, (piece, size) in enumerate(zip(splits, sizes)):
            piece_ids = self.encode(piece)
            ids += piece_ids
            mask += [False] * len(piece_ids)
            if images is not None:
                image_tiles, grid = self.image_tiles(images[i], cropping)
                tiles += image_tiles
            else:
                grid = self.image_grid(size, cropping)
            n = self.num_image_tokens(*grid)
            crops.append(list(grid))
            counts.append(n)
            ids += [self.image_token_id] * n
            mask += [True] * n
        piece_ids = self.encode(splits[-1])
        ids += piece_ids
        mask += [False] * len(piece_ids)
        return ids, mask, tiles, crops, counts

    def _conversation_tokens(
        self,
        conversation: Sequence[dict[str, Any]],
        images: Sequence[Image.Image] | None,
        sizes: Sequence[tuple[int, int]],
        system_prompt: str,
    ) -> tuple[list[int], list[int], list[bool], list[torch.Tensor], list[list[int]], list[int]]:
        """Upstream ``format_messages_v2``: bos, then each user turn (with the assistant cue) and answer."""
        cropping = len(sizes) <= 2
        ids, labels, mask = [self.bos_id], [self.bos_id], [False]
        tiles: list[torch.Tensor] = []
        crops: list[list[int]] = []
        counts: list[int] = []
        image_index = 0
        for idx, message in enumerate(conversation):
            role, content = message["role"], str(message["content"]).strip()
            if role in (USER_ROLE, "user"):
                turn = self.format_turn(USER_ROLE, content, system_prompt if idx == 0 else "")
                n = turn.count(self.config.image_token)
                turn_images = None if images is None else images[image_index : image_index + n]
                turn_ids, turn_mask, turn_tiles, turn_crops, turn_counts = self._tokenize_with_images(
                    turn, turn_images, sizes[image_index : image_index + n], cropping
                )
                image_index += n
                ids += turn_ids
                labels += [self.config.ignore_id] * len(turn_ids) if self.config.mask_prompt else turn_ids
                mask += turn_mask
                tiles += turn_tiles
                crops += turn_crops
                counts += turn_counts
            elif role in (ASSISTANT_ROLE, "assistant"):
                if self.config.image_token in content:
                    raise ValueError(f"an assistant turn must not contain {self.config.image_token}")
                answer = self.encode(content) + [self.eos_id]
                ids += answer
                labels += answer
                mask += [False] * len(answer)
            elif role in ("system", "deepseekapi-sys"):
                if idx != 0:
                    raise ValueError("a system message may only open the conversation")
                system_ids = self.encode(content)
                ids += system_ids
                labels += [self.config.ignore_id] * len(system_ids) if self.config.mask_prompt else system_ids
                mask += [False] * len(system_ids)
            else:
                raise ValueError(f"unknown role {role!r}")
        if image_index != len(sizes):
            raise ValueError(
                f"the conversation has {image_index} {self.config.image_token} placeholders but {len(sizes)} images"
            )
        return ids, labels, mask, tiles, crops, counts

    def process_one(
        self,
        conversation: Sequence[dict[str, Any]],
        images: Sequence[Image.Image] = (),
        *,
        system_prompt: str = "",
        inference_mode: bool = True,
    ) -> ProcessedConversation:
        """One conversation (list of ``{"role", "content"}``) with its images, in placeholder order.

        ``system_prompt`` is prepended to the first user turn. (Upstream puts it only into the
        informational ``sft_format`` string and tokenizes the template's own empty system
        message; with the empty system prompt used everywhere here both agree.)
        """
        images = list(images)
        sizes = [image.size for image in images]
        ids, labels, mask, tiles, crops, counts = self._conversation_tokens(conversation, images, sizes, system_prompt)
        input_ids = torch.tensor(ids, dtype=torch.long)
        target_ids = torch.tensor(labels, dtype=torch.long)
        images_seq_mask = torch.tensor(mask, dtype=torch.bool)
        target_ids[(input_ids < 0) | (input_ids == self.image_token_id)] = self.config.ignore_id
        if inference_mode:
            if ids[-1] != self.eos_id:
                raise ValueError("inference mode expects the conversation to end with an (empty) assistant turn")
            input_ids, target_ids, images_seq_mask = input_ids[:-1], target_ids[:-1], images_seq_mask[:-1]
        size = self.config.image_size
        return ProcessedConversation(
            sft_format=self.format_messages(conversation, system_prompt),
            input_ids=input_ids,
            target_ids=target_ids,
            images=torch.stack(tiles) if tiles else torch.zeros(1, 3, size, size),
            images_seq_mask=images_seq_mask,
            images_spatial_crop=torch.tensor(crops, dtype=torch.long) if crops else torch.zeros(1, 2, dtype=torch.long),
            num_image_tokens=counts,
        )

    def count_tokens(
        self,
        conversation: Sequence[dict[str, Any]],
        image_sizes: Sequence[tuple[int, int]] = (),
        *,
        system_prompt: str = "",
    ) -> int:
        """Length of ``process_one(conversation, images)`` for images of these (width, height) sizes."""
        ids, *_ = self._conversation_tokens(conversation, None, [tuple(s) for s in image_sizes], system_prompt)
        return len(ids) - 1  # inference mode drops the final eos

    def batchify(self, samples: Sequence[ProcessedConversation], padding: Literal["left"] = "left") -> DeepseekVL2Batch:
        """Left-pad ids and masks, pad tiles with zero tiles and crops with zero rows.

        Unlike upstream (which returns ``images_seq_mask`` as int64 0/1 when padding is needed,
        and then crashes in ``masked_scatter_``), the mask stays boolean.
        """
        if padding != "left":
            raise ValueError("only left padding is supported (generation reads the last column)")
        if not samples:
            raise ValueError("batchify needs at least one conversation")
        batch, seq = len(samples), max(len(s) for s in samples)
        input_ids = torch.full((batch, seq), self.pad_id, dtype=torch.long)
        labels = torch.full((batch, seq), self.config.ignore_id, dtype=torch.long)
        attention_mask = torch.zeros(batch, seq, dtype=torch.bool)
        images_seq_mask = torch.zeros(batch, seq, dtype=torch.bool)
        max_tiles = max(s.images.shape[0] for s in samples)
        max_images = max(s.images_spatial_crop.shape[0] for s in samples)
        images = torch.zeros(batch, max_tiles, *samples[0].images.shape[1:], dtype=samples[0].images.dtype)
        crops = torch.zeros(batch, max_images, 2, dtype=torch.long)
        for b, s in enumerate(samples):
            n = len(s)
            input_ids[b, seq - n :] = s.input_ids
            labels[b, seq - n :] = s.target_ids
            attention_mask[b, seq - n :] = True
            images_seq_mask[b, seq - n :] = s.images_seq_mask
            images[b, : s.images.shape[0]] = s.images
            crops[b, : s.images_spatial_crop.shape[0]] = s.images_spatial_crop
        labels[labels == self.pad_id] = self.config.ignore_id  # as upstream (labels never hold the pad id)
        return DeepseekVL2Batch(
            sft_format=[s.sft_format for s in samples],
            input_ids=input_ids,
            labels=labels,
            images=images,
            attention_mask=attention_mask,
            images_seq_mask=images_seq_mask,
            images_spatial_crop=crops,
            seq_lens=[len(s) for s in samples],
            num_image_tokens=[s.num_image_tokens for s in samples],
        )

    def __call__(
        self,
        conversations: Sequence[dict[str, Any]],
        images: Sequence[Image.Image] = (),
        *,
        system_prompt: str = "",
        inference_mode: bool = True,
    ) -> DeepseekVL2Batch:
        """One conversation as a batch of one (upstream ``processor(..., force_batchify=True)``)."""
        return self.batchify(
            [self.process_one(conversations, images, system_prompt=system_prompt, inference_mode=inference_mode)]
        )

    # ------------------------------------------------------------ user turns
    @staticmethod
    def user_conversation(prompt: str) -> list[dict[str, str]]:
        """A single user message followed by the empty assistant turn that cues the answer."""
        return [{"role": USER_ROLE, "content": prompt}, {"role": ASSISTANT_ROLE, "content": ""}]
