from __future__ import annotations

import pytest
from torch import nn

from text_recognition import list_stages
from text_recognition.registry import DTRB_STAGES, canonical_stage_name, register_stage


def test_list_stages():
    assert list_stages() == {
        "transformation": ["None", "TPS"],
        "feature_extraction": ["VGG", "RCNN", "ResNet", "ViT"],
        "sequence_modeling": ["None", "BiLSTM"],
        "prediction": ["CTC", "Attn", "PARSeq", "ViTSTR"],
    }
    assert list_stages("prediction") == ["CTC", "Attn", "PARSeq", "ViTSTR"]


def test_dtrb_grid_is_listed_first_in_dtrb_order():
    for kind, names in DTRB_STAGES.items():
        assert list_stages(kind)[: len(names)] == list(names)


def test_unknown_kind():
    with pytest.raises(ValueError, match="Unknown stage kind 'decoder'"):
        list_stages("decoder")


def test_canonical_names():
    assert canonical_stage_name("feature_extraction", "rcnn") == "RCNN"
    assert canonical_stage_name("transformation", "none") == "None"
    assert canonical_stage_name("feature_extraction", "vit") == "ViT"
    assert canonical_stage_name("prediction", "parseq") == "PARSeq"
    assert canonical_stage_name("prediction", "VITSTR") == "ViTSTR"


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):

        @register_stage("prediction", "ctc")
        class Another(nn.Module):
            pass
