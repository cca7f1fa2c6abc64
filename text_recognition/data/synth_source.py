"""The synthetic engine as a training source: the ``select_data`` token ``synth`` draws samples rendered on the fly.

``--select_data synth-MJ --batch_ratio 0.5-0.5`` mixes ``RealisticWords`` samples with the real source ``MJ``
exactly as two stored sources are mixed: each batch holds ``round(batch_size * ratio)`` of each. The synthetic source
is endless and needs no shuffling (sample ``i`` is already a random draw of ``(seed, i)``), so the batch sampler reads
it in order: process ``rank`` at ``iteration`` takes stream positions ``(iteration * world_size + rank) * count``
onwards, which makes processes disjoint and resuming exact. Images are rendered where the rows are fetched, in the
DataLoader workers; nothing is written to disk.

Without ``--valid_data``, validation is a fixed held-out set of ``synth_valid_samples`` samples from another seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from ..config import SYNTH_TOKEN, ModelConfig

SYNTH = SYNTH_TOKEN  # the select_data token of the synthetic engine
ENDLESS = 2**40  # the synthetic source's size as the sampler sees it: its stream positions never wrap in practice
VALID_SEED_OFFSET = 1_000_003  # held-out validation samples: the training seed plus this


def synth_options(value: str | dict[str, Any] | None) -> dict[str, Any]:
    """``--synth``: a YAML/JSON file, inline JSON, or a mapping (from a ``--config`` file) -> engine options."""
    if not value:
        return {}
    if isinstance(value, dict):
        return dict(value)
    text = value.strip()
    path = Path(text)
    if not text.startswith("{") and path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise FileNotFoundError(f"--synth: no file {text!r}; give a YAML/JSON file of engine options or inline "
                                    f"JSON such as '{{\"languages\": [\"en\", \"de\"]}}'.")  # fmt: skip
        text = path.read_text(encoding="utf-8")
    try:
        options = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as error:
        reason = str(error).splitlines()[0]
        raise ValueError(f"--synth is neither a YAML/JSON file nor inline JSON ({reason}): give e.g. "
                         f"'{{\"languages\": [\"en\"]}}' or a file name ending in .yaml or .json.") from None
    if not isinstance(options, dict):
        raise ValueError(f"--synth must give a mapping of engine options (e.g. '{{\"languages\": [\"en\"]}}'), got "
                         f"{options!r}.")  # fmt: skip
    return options


def engine_options(options: dict[str, Any], config: ModelConfig, seed: int) -> dict[str, Any]:
    """The engine's options for a model: its charset (``--character``; a model that is not ``--sensitive`` reads
    upper-case letters as lower-case, and so are they labelled), ``batch_max_length`` as the longest label, its
    channels, and the run's seed; ``options`` may change anything but the charset."""
    if "charset" in options:
        raise ValueError("--synth: charset comes from the model (--character, --sensitive); leave it out of the "
                         "engine's options.")
    max_length = options.get("max_length", config.batch_max_length)
    if isinstance(max_length, int) and max_length > config.batch_max_length:
        raise ValueError(f"--synth max_length={max_length} is longer than --batch_max_length="
                         f"{config.batch_max_length}: those labels would be dropped. Lower it, or raise "
                         f"--batch_max_length.")  # fmt: skip
    return {"charset": config.character, "max_length": config.batch_max_length, "rgb": config.input_channel == 3,
            "seed": seed, **options}  # fmt: skip


class SynthSource:
    """``RealisticWords`` as a source of ``MixedSources``: row ``i`` is ``render(i)`` (a PIL image and its label).

    ``size`` is what the sampler sees (``ENDLESS`` for training, the sample count for validation). The engine is
    built once in each process from its options (fonts and textures load lazily) and pickles small, so each DataLoader
    worker renders its own rows.
    """

    def __init__(self, options: dict[str, Any], size: int = ENDLESS) -> None:
        from .synth import RealisticWords

        self.engine = RealisticWords(**options)
        self.size = int(size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, rows: int | Sequence[int]) -> dict[str, Any]:
        if isinstance(rows, int):
            image, label = self.engine.render(rows)
            return {"image": image, "label": label}
        images: list[Image.Image] = []
        labels: list[str] = []
        for row in rows:
            image, label = self.engine.render(int(row))
            images.append(image)
            labels.append(label)
        return {"image": images, "label": labels}

    def describe(self) -> str:
        """One line for ``log_dataset.txt`` (and the resumed-run fingerprint): every option of the engine."""
        return json.dumps(self.engine.options, sort_keys=True, default=str)
