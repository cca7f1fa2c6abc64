"""Every shipped accelerate config parses with accelerate's own loader (unknown keys are an error there)."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from conftest import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "accelerate_configs").glob("*.yaml"))
EXPECTED = {
    "cpu.yaml": ("NO", 1, "no"),
    "cpu_ddp.yaml": ("MULTI_GPU", 2, "no"),
    "single_gpu.yaml": ("NO", 1, "bf16"),
    "multi_gpu.yaml": ("MULTI_GPU", 8, "bf16"),
    "multi_node.yaml": ("MULTI_GPU", 16, "bf16"),
}


def test_the_expected_configs_are_shipped():
    assert sorted(path.name for path in CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path):
    config = load_config_from_file(str(path))
    distributed, processes, precision = EXPECTED[path.name]
    assert (str(config.distributed_type).split(".")[-1], config.num_processes, str(config.mixed_precision)) == (
        distributed,
        processes,
        precision,
    )
    assert path.read_text().count("#") >= 3  # annotated
