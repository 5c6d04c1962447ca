from __future__ import annotations

from pathlib import Path

import pytest

from embedloop.config import load_settings, parse_column_map
from embedloop.errors import ConfigError


def test_file_then_environment_then_overrides(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "embedloop.toml"
    config.write_text('[embedloop]\nlogs = "logs"\nmin_clicks = 5\nmin_improvement = 0.1\n'
                      '[embedloop.training]\nepochs = 3\n')
    monkeypatch.setenv("EMBEDLOOP_MIN_CLICKS", "7")
    settings = load_settings(config, min_improvement=0.2, training={"batch_size": 8})
    assert settings.logs == str(tmp_path / "logs")  # relative to the config file
    assert settings.min_clicks == 7
    assert settings.min_improvement == 0.2
    assert settings.training.epochs == 3 and settings.training.batch_size == 8


@pytest.mark.parametrize("overrides, message", [
    ({"min_clicks": "many"}, "setting 'min_clicks'"),
    ({"no_such_setting": 1}, "unknown setting"),
    ({"training": {"epocs": 1}}, "unknown setting"),
    ({"retriever": "sparse"}, "retriever must be one of dense, hybrid"),
    ({"retriever": "hybrid", "fusion_weight": 1.5}, r"fusion weight must lie in \[0, 1\]"),
    ({"fusion_weights": [0.5, 2]}, r"fusion_weights must be weights in \[0, 1\]"),
    ({"retriever": "hybrid", "lexical_language": "klingon"}, "no stemmer for language"),
    ({"lexical_cjk": "words"}, "lexical_cjk must be one of bigrams, jieba"),
])
def test_bad_settings_are_one_clear_error(tmp_path: Path, overrides: dict,
                                          message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, home=tmp_path, **overrides)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_a_password_in_the_config_file_is_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "embedloop.toml"
    config.write_text('[embedloop]\ntracking_uri = "https://ml:hunter2@mlflow.internal"\n')
    with pytest.raises(ConfigError, match="keep secrets out of config files") as error:
        load_settings(config)
    assert "hunter2" not in str(error.value)
    config.write_text('[embedloop]\n')  # the same URI from the environment is fine
    monkeypatch.setenv("EMBEDLOOP_TRACKING_URI", "https://ml:hunter2@mlflow.internal")
    assert load_settings(config).tracking_uri.endswith("mlflow.internal")


def test_column_map() -> None:
    assert parse_column_map("q=query, document=doc_id") == {"q": "query", "document": "doc_id"}
    with pytest.raises(ConfigError):
        parse_column_map("q")
