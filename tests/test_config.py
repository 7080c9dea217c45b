"""Settings from the environment: one variable per field, upper-cased, checked once at start."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from function.config import Config, ConfigError


def defaults() -> Config:
    """Config() with the model cache from_env names when nothing is set: the user's cache directory."""
    return replace(Config(), model_cache_dir=os.path.join(os.path.expanduser("~"), ".cache", "bird-classifier"))


def test_no_variables_give_the_defaults():
    config = Config.from_env({})
    assert config == defaults()
    assert config.model_runtime == "auto"
    assert config.model_url == "https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1"
    assert config.labels_url == ""  # the model's own labels, else the birds module's map
    assert (config.common_names_url, config.score_threshold) == ("", 0.0)
    assert (config.top_k, config.max_top_k, config.log_level) == (3, 20, "INFO")


def test_variables_are_named_like_the_fields_upper_cased():
    config = Config.from_env({"MODEL_URL": "http://127.0.0.1:9000/model", "USER_AGENT": "tests/1.0",
                              "STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443"})
    assert config.model_url == "http://127.0.0.1:9000/model"
    assert config.user_agent == "tests/1.0"
    assert config.storage_emulator_host == "http://127.0.0.1:4443"


def test_integers_and_floats_are_parsed_to_their_types():
    config = Config.from_env({"TOP_K": "5", "MAX_PHOTO_BYTES": "1000000", "READ_TIMEOUT_S": "2.5",
                              "CONNECT_TIMEOUT_S": "3"})
    assert config.top_k == 5 and type(config.top_k) is int
    assert config.max_photo_bytes == 1_000_000 and type(config.max_photo_bytes) is int
    assert config.read_timeout_s == 2.5
    assert config.connect_timeout_s == 3.0 and type(config.connect_timeout_s) is float


def test_surrounding_whitespace_is_ignored():
    assert Config.from_env({"TOP_K": " 7 \n"}).top_k == 7


def test_log_level_is_upper_cased():
    assert Config.from_env({"LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_an_unknown_log_level_is_rejected():
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        Config.from_env({"LOG_LEVEL": "verbose"})


@pytest.mark.parametrize("name, raw", [("TOP_K", "three"), ("TOP_K", "2.5"), ("MAX_PHOTO_BYTES", "25MB"),
                                       ("READ_TIMEOUT_S", "fast"), ("MODEL_WAIT_S", "5s")])
def test_a_value_that_is_not_a_number_is_rejected_naming_the_variable(name, raw):
    with pytest.raises(ConfigError, match=f"^{name} .*{raw!r}"):
        Config.from_env({name: raw})


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_a_number_that_is_not_finite_is_rejected(raw):
    with pytest.raises(ConfigError, match="READ_TIMEOUT_S"):
        Config.from_env({"READ_TIMEOUT_S": raw})


@pytest.mark.parametrize("name, raw", [("TOP_K", "0"), ("MAX_TOP_K", "-1"), ("CONNECT_TIMEOUT_S", "0"),
                                       ("READ_TIMEOUT_S", "-0.5"), ("MAX_PHOTO_BYTES", "0"),
                                       ("MAX_PHOTO_PIXELS", "-5"), ("FETCH_WORKERS", "0"), ("MAX_URLS", "0"),
                                       ("LABELS_TIMEOUT_S", "0"), ("MODEL_WAIT_S", "0")])
def test_a_value_that_must_be_positive_is_rejected_at_zero_or_below(name, raw):
    with pytest.raises(ConfigError, match=f"^{name} must be positive"):
        Config.from_env({name: raw})


def test_the_model_retry_interval_may_be_zero_but_not_negative():
    assert Config.from_env({"MODEL_LOAD_RETRY_S": "0"}).model_load_retry_s == 0.0
    with pytest.raises(ConfigError, match="MODEL_LOAD_RETRY_S"):
        Config.from_env({"MODEL_LOAD_RETRY_S": "-1"})


def test_top_k_may_not_exceed_max_top_k():
    with pytest.raises(ConfigError, match="TOP_K .*MAX_TOP_K"):
        Config.from_env({"TOP_K": "21"})
    with pytest.raises(ConfigError, match="TOP_K .*MAX_TOP_K"):
        Config.from_env({"TOP_K": "6", "MAX_TOP_K": "5"})


def test_top_k_may_equal_a_raised_max_top_k():
    config = Config.from_env({"TOP_K": "30", "MAX_TOP_K": "30"})
    assert (config.top_k, config.max_top_k) == (30, 30)


def test_blank_values_are_ignored():
    config = Config.from_env({"TOP_K": "", "MODEL_URL": "   ", "READ_TIMEOUT_S": "\t", "LOG_LEVEL": ""})
    assert config == defaults()


def test_unrelated_and_lower_case_variables_are_ignored():
    assert Config.from_env({"PATH": "/usr/bin", "top_k": "9", "TOPK": "9"}) == defaults()


@pytest.mark.parametrize(("env", "expected"), [
    ({"MODEL_CACHE_DIR": "/models"}, "/models"),
    ({"MODEL_CACHE_DIR": "/models", "TFHUB_CACHE_DIR": "/hub"}, "/models"),
    ({"TFHUB_CACHE_DIR": "/hub"}, "/hub"),  # one cache volume for both
    ({"XDG_CACHE_HOME": "/xdg"}, "/xdg/bird-classifier"),
])
def test_the_model_cache_directory_defaults_to_the_hub_cache_then_the_users_cache(env, expected):
    assert Config.from_env(env).model_cache_dir == expected


@pytest.mark.parametrize("value", ["auto", "litert", "tensorflow", "LiteRT"])
def test_model_runtime_accepts_the_three_runtimes(value):
    assert Config.from_env({"MODEL_RUNTIME": value}).model_runtime == value.lower()


def test_an_unknown_model_runtime_stops_the_start_naming_the_choices():
    with pytest.raises(ConfigError, match="MODEL_RUNTIME must be one of auto, litert, tensorflow"):
        Config.from_env({"MODEL_RUNTIME": "onnx"})


def test_without_a_mapping_the_process_environment_is_read(monkeypatch):
    monkeypatch.setenv("TOP_K", "4")
    monkeypatch.setenv("MAX_TOP_K", "10")
    assert Config.from_env().top_k == 4
