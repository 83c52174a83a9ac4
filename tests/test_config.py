import pytest

from darts_nas.config import SearchConfig, TrainConfig
from darts_nas.errors import ConfigError


def test_json_round_trip():
    config = SearchConfig(dataset="digits", layers=5, primitives=("skip_connect", "sep_conv_3x3"), unrolled=True)
    again = SearchConfig.from_json(config.to_json())
    assert again == config
    assert isinstance(again.primitives, tuple) and isinstance(again.arch_betas, tuple)


def test_frozen():
    with pytest.raises(Exception):
        SearchConfig().layers = 3  # type: ignore[misc]


@pytest.mark.parametrize("changes,message", [
    ({"train_portion": 0.0}, "--train-portion"),
    ({"train_portion": 1.0}, "--train-portion"),
    ({"layers": 0}, "--layers"),
    ({"batch_size": 0}, "--batch-size"),
    ({"learning_rate": 0.0}, "--learning-rate"),
    ({"momentum": -0.1}, "--momentum"),
    ({"device": "tpu"}, "--device"),
    ({"epochs": -1}, "--epochs"),
    ({"epochs": 0}, "untrained alphas"),
    ({"primitives": ()}, "--ops"),
    # NaN passes every '< 0' check and, in config.json, makes the run impossible to resume (NaN != NaN)
    ({"grad_clip": float("nan")}, "--grad-clip must be a finite number"),
    ({"learning_rate_min": float("nan")}, "--learning-rate-min must be a finite number"),
    ({"weight_decay": float("inf")}, "--weight-decay must be a finite number"),
    ({"learning_rate": float("inf")}, "--learning-rate must be a finite number"),
    ({"arch_betas": (0.5, float("nan"))}, "--arch-betas must be a finite number"),
])
def test_invalid_settings_name_the_flag(changes, message):
    with pytest.raises(ConfigError, match=message):
        SearchConfig(**changes)


@pytest.mark.parametrize("changes,message", [
    ({"momentum": float("nan")}, "--momentum must be a finite number"),
    ({"auxiliary_weight": float("nan")}, "--auxiliary-weight must be a finite number"),
    ({"learning_rate": float("inf")}, "--learning-rate must be a finite number"),
    ({"epochs": -1}, "--epochs"),
])
def test_invalid_training_settings_name_the_flag(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.for_protocol("cifar", **changes)


def test_unknown_keys_and_bad_json_are_refused():
    with pytest.raises(ConfigError, match="unknown search settings"):
        SearchConfig.from_dict({"layers": 3, "cells": 4})
    with pytest.raises(ConfigError, match="not valid JSON"):
        SearchConfig.from_json("{layers: 3")
