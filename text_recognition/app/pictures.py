"""The pictures of the app: the input as the model sees it (resized, padded, grayscale), and what its head read
from it: for CTC the best symbol of every frame with its probability, for attention the probability of every
step of the reading (teacher-forced along the text the decoder chose), drawn with Pillow."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageDraw, ImageFont

from ..fastpath import inference_settings
from ..onnx_model import OnnxModel
from ..tokenizer import BLANK_ID
from ..transforms import align_image, keep_ratio_width

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..model import TextRecognitionModel

SCALE = 3  # the model's input is 32 pixels high: shown three times larger, each pixel a block
CELL = 24  # width of one attention step in the steps picture (CTC frames share the input's width)
BAR = 40  # height of a probability of 1
BLANK_SHOWN = "·"
END_SHOWN = "[s]"
SYMBOL = (37, 99, 235)  # a frame or step that emits a symbol
QUIET = (163, 163, 163)  # a CTC blank, or a repeat that the collapse drops
OTHER = (220, 38, 38)  # attention: the model's own first choice where the reading took another symbol


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def seen_picture(image: Image.Image, config: ModelConfig) -> tuple[Image.Image, str]:
    """The model's input for ``image`` (``transforms.align_image``, exactly what it reads) enlarged ``SCALE`` times,
    and a caption saying how it was made."""
    tensor = align_image(image, config.img_h, config.img_w, config.pad, config.input_channel)  # [C, H, W] in [-1, 1]
    pixels = tensor.mul(0.5).add(0.5).mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    seen = Image.fromarray(pixels[:, :, 0] if config.input_channel == 1 else pixels).convert("RGB")
    seen = seen.resize((config.img_w * SCALE, config.img_h * SCALE), Image.Resampling.NEAREST)
    colour = "grayscale" if config.input_channel == 1 else "RGB"
    caption = f"{image.width} x {image.height} -> {config.img_w} x {config.img_h} {colour}, "
    if config.pad:
        width = keep_ratio_width(image.width, image.height, config.img_h, config.img_w)
        caption += f"resized to {width} x {config.img_h} (ratio kept)"
        if width < config.img_w:
            caption += f", right-padded by repeating its last column ({config.img_w - width} columns, marked)"
            draw = ImageDraw.Draw(seen)
            draw.line([(width * SCALE, 0), (width * SCALE, seen.height)], fill=OTHER, width=1)
    else:
        caption += "stretched"
    return seen, caption


@torch.inference_mode()
def head_steps(model: TextRecognitionModel, image: Image.Image, text: str, precision: str = "fp32"):
    """What the head read: CTC, ``[(best symbol, probability)]`` per frame; attention, ``[(symbol of the reading,
    its probability, the model's own best symbol, its probability)]`` per step up to the end ``[s]`` (none when the
    reading ran out of steps before it).
    Probabilities are the model's (softmax of the logits over its ``temperature``), as its confidences."""
    config = model.config
    pixel_values = align_image(image, config.img_h, config.img_w, config.pad, config.input_channel)[None]
    pixel_values = pixel_values.to(model.device)
    tokens = model.tokenizer.tokens
    if isinstance(model, OnnxModel):
        # an exported graph: its greedy logits, which are the reading's (an attention export decodes greedily only)
        logits = model.logits(pixel_values)
    else:
        with torch.inference_mode(), inference_settings(model, precision):
            features = model.encode(pixel_values)
            if config.prediction in ("CTC", "ViTSTR"):  # nothing fed back: the logits are every reading's
                logits = model.Prediction(features)
            elif config.prediction == "PARSeq":
                # its own decoding when that is the reading; else (a search, constraints) its autoregressive decoder
                # along the reading, as the search ran it
                logits = model.Prediction(features)
                if model.tokenizer.decode(logits.argmax(-1))[0] != text:
                    ids = [model.tokenizer.char_to_id[c] for c in text] + [model.tokenizer.end_id]
                    ids = torch.tensor([ids[: config.batch_max_length + 1]], device=features.device)
                    logits = model.Prediction.forced(features, ids)
            else:
                # batch_max_length + 1: a reading that never ended ([s]) holds that many symbols
                ids, _ = model.tokenizer.encode([text], config.batch_max_length + 1)
                logits = model.Prediction(features, ids.to(features.device))
    probs = (logits.float() / config.temperature).softmax(-1)[0]  # [T, num_class]
    best_prob, best = probs.max(-1)
    if config.prediction == "CTC":
        return [(tokens[i], p) for i, p in zip(best.tolist(), best_prob.tolist(), strict=True)]
    chosen = [model.tokenizer.char_to_id[c] for c in text] + [model.tokenizer.end_id]
    chosen = chosen[: len(probs)]  # a reading that ran out of steps never came to [s]
    best, best_prob = best[: len(chosen)].tolist(), best_prob[: len(chosen)].tolist()  # steps after [s]: unread
    return [(tokens[c], float(probs[step, c]), tokens[b], p)
            for step, (c, b, p) in enumerate(zip(chosen, best, best_prob, strict=True))]  # fmt: skip


def steps_picture(model: TextRecognitionModel, image: Image.Image, text: str, precision: str = "fp32") -> Image.Image:
    """The picture of ``head_steps``: a bar as high as the probability and the symbol below it, per frame (CTC: as
    wide as ``seen_picture``, so that each frame sits under the columns of the input it reads) or per step
    (attention, with the model's own first choice in red where the reading took another symbol)."""
    steps = head_steps(model, image, text, precision)
    ctc = model.config.prediction == "CTC"
    width = model.config.img_w * SCALE if ctc else max(len(steps) * CELL, 60)
    cell = width / len(steps) if ctc else CELL
    font, small = _font(14 if ctc else 16), _font(12)
    picture = Image.new("RGB", (width, BAR + (22 if ctc else 40)), "white")
    draw = ImageDraw.Draw(picture)
    tokens = model.tokenizer.tokens
    blank, end = (tokens[BLANK_ID], None) if ctc else (None, tokens[model.tokenizer.end_id])
    previous = None
    for i, step in enumerate(steps):
        if ctc:
            symbol, probability = step
            emits = symbol != blank and symbol != previous  # what the collapse keeps
            shown, colour, below = (symbol if symbol != blank else BLANK_SHOWN), (SYMBOL if emits else QUIET), None
            previous = symbol
        else:
            symbol, probability, best, _ = step
            shown, colour = (END_SHOWN if symbol == end else symbol), SYMBOL
            below = None if best == symbol else (END_SHOWN if best == end else best)
        x = i * cell
        bar = round(BAR * probability)
        draw.rectangle([round(x + cell * 0.15), BAR - bar, round(x + cell * 0.85) - 1, BAR], fill=colour)
        draw.text((x + cell / 2, BAR + 3), shown, fill=colour, font=font, anchor="ma")
        if below is not None:
            draw.text((x + cell / 2, BAR + 22), below, fill=OTHER, font=small, anchor="ma")
    return picture


def box_picture(photo: Image.Image, corners: list[tuple[int, int]], box: tuple[int, int, int, int] | None = None):
    """``photo`` with the crop tool's first corner marked, or its ``box`` drawn."""
    picture = photo.convert("RGB")
    draw = ImageDraw.Draw(picture)
    line = max(2, round(max(picture.size) / 250))
    if box is not None:
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=OTHER, width=line)
    for x, y in corners:
        draw.ellipse([x - 3 * line, y - 3 * line, x + 3 * line, y + 3 * line], outline=OTHER, width=line)
    return picture
