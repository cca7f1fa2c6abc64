"""Batch assembly, run in DataLoader workers: DTRB's AlignCollate, and the collator that decodes stored image bytes,
cleans labels and sets corrupt images aside instead of training on a black "[dummy_label]" image as DTRB did."""

from __future__ import annotations

import io
import logging
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from PIL import Image

from ..augment import TextAugment
from ..transforms import align_batch, to_mode
from .labels import LabelRules
from .lmdb import image_key

if TYPE_CHECKING:
    from ..config import ModelConfig

logger = logging.getLogger(__name__)


class AlignCollate:
    """DTRB's AlignCollate: ``[{"image": PIL.Image, "label": str}, ...]`` (or ``(image, label)`` pairs) ->
    ``(pixel_values [B, C, img_h, img_w] in [-1, 1], labels)``, tensor-equal to DTRB's for the same images.

    Args:
        img_h, img_w: the network input size.
        keep_ratio_with_pad: DTRB's ``--PAD``: resize to ``img_h`` keeping the aspect ratio (at most ``img_w``
            wide) and pad on the right by repeating the last column; otherwise stretch to ``img_w``.
        input_channel: 1 (images converted to ``L``) or 3 (``RGB``).
    """

    def __init__(self, img_h: int = 32, img_w: int = 100, keep_ratio_with_pad: bool = False, input_channel: int = 1):
        if input_channel not in (1, 3):
            raise ValueError(f"input_channel must be 1 or 3, got {input_channel}.")
        self.img_h, self.img_w = img_h, img_w
        self.keep_ratio_with_pad = keep_ratio_with_pad
        self.input_channel = input_channel
        self.mode = "RGB" if input_channel == 3 else "L"

    def __call__(self, batch: Sequence[Any]) -> tuple[torch.Tensor, list]:
        images, labels = [], []
        for item in batch:
            if item is None:
                continue
            image, label = (item["image"], item["label"]) if isinstance(item, dict) else item
            images.append(to_mode(image, self.mode))
            labels.append(label)
        if not images:
            return torch.empty(0, self.input_channel, self.img_h, self.img_w), labels
        return align_batch(images, self.img_h, self.img_w, self.keep_ratio_with_pad, self.input_channel), labels


class SkippedSample(NamedTuple):
    source: str
    index: int  # position in the source as stored (0-based row of the dataset; LMDB index - 1)
    error: str
    lmdb_index: int | None = None  # from an LMDB: its 1-based index, the number in its keys

    @property
    def location(self) -> str:
        """Where the sample is, in the numbering of its store: an LMDB's 1-based index and key (what
        ``create_lmdb_dataset.py``, ``convert_lmdb.py`` and ``audit_dataset.py`` report), a dataset's 0-based row."""
        if self.lmdb_index is not None:
            return f"LMDB index {self.lmdb_index} (key {image_key(self.lmdb_index).decode()})"
        return f"row {self.index} (0-based, dataset[{self.index}])"


def decode_image(data: Any, mode: str) -> Image.Image:
    """Encoded bytes (or a ``datasets.Image(decode=False)`` dict, or a PIL image) -> a PIL image in ``mode``; 16-bit
    and float images are scaled, not clipped (``transforms.to_mode``)."""
    if isinstance(data, Image.Image):
        return to_mode(data, mode)
    if isinstance(data, dict):
        data = data["bytes"] if data.get("bytes") is not None else open(data["path"], "rb").read()
    with Image.open(io.BytesIO(data)) as image:
        return to_mode(image, mode)  # decoded now: the buffer is closed on leaving the block


class TextCollator:
    """Rows ``{"image": bytes, "label": raw label, "source": name, "index": int}`` -> a training batch.

    Returns ``{"pixel_values": [B, C, H, W], "labels": list[str], "stored_labels": list[str],
    "ids": list[(source, index)], "skipped": list[SkippedSample], "draw": int | None}`` (``draw``: the batch number
    the sampler tagged the rows with, if it did): labels are cleaned as DTRB does at load time
    (lowercased unless sensitive,
    out-of-charset symbols removed); an image that cannot be decoded is left out of the batch and reported in
    ``skipped``. With ``augment``, each decoded image is augmented before the resize (training only).
    """

    def __init__(
        self, config: ModelConfig, data_filtering_off: bool = False, augment: TextAugment | None = None
    ) -> None:
        self.align = AlignCollate(config.img_h, config.img_w, config.pad, config.input_channel)
        self.rules = LabelRules(config.character, config.batch_max_length, config.sensitive, data_filtering_off)
        self.augment = augment

    def __call__(self, rows: Sequence[dict]) -> dict[str, Any]:
        items, ids, stored, skipped = [], [], [], []
        for row in rows:
            source, index = row.get("source", "?"), row.get("index", -1)
            try:
                image = decode_image(row["image"], self.align.mode)
            except Exception as error:  # any decoding failure means "corrupt image"
                skipped.append(SkippedSample(source, index, f"{type(error).__name__}", row.get("lmdb_index")))
                continue
            if self.augment is not None:  # keyed by the drawing iteration and the sample: resumable, per seed
                image = self.augment(image, row.get("draw", 0), zlib.crc32(source.encode()), index)
            items.append((image, self.rules.clean(row["label"])))
            ids.append((source, index))
            stored.append(row["label"])
        pixel_values, labels = self.align(items)
        draw = rows[0].get("draw") if len(rows) else None  # the batch number, from a tagging sampler
        return {"pixel_values": pixel_values, "labels": labels, "stored_labels": stored, "ids": ids,
                "skipped": skipped, "draw": draw}  # fmt: skip


class SkipTracker:
    """Counts corrupt samples reported by ``TextCollator`` batches and warns once per source, with the index."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def update(self, skipped: Sequence[SkippedSample]) -> None:
        for sample in skipped:
            if not self.counts[sample.source]:
                logger.warning(
                    "Corrupt image in %s at %s (%s): skipped. Further corrupt images of this source are only counted.",
                    sample.source,
                    sample.location,
                    sample.error,
                )
            self.counts[sample.source] += 1
