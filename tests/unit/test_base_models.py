"""What `base_model` may name (base_models.py): bundled models, folders, hub ids, and
prompts written into a copy of a folder that lacks them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedloop.config import load_settings
from embedloop.errors import ConfigError
from embedloop.models.base_models import check_prompts, minilm, resolve_base_model

E5_PROMPTS = (("document", "passage: "), ("query", "query: "))


def test_bundled_names_and_folders_resolve_to_local_folders(tmp_path: Path) -> None:
    assert resolve_base_model("") == resolve_base_model("all-MiniLM-L6-v2") == minilm()
    assert resolve_base_model(minilm()) == minilm()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a sentence-transformers folder"):
        resolve_base_model(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="multilingual-e5-small"):
        resolve_base_model("no-such-model")


def test_a_hub_id_offline_and_not_cached_says_why(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        resolve_base_model("intfloat/not-in-this-cache")


def test_prompts_are_written_into_a_copy_of_the_folder() -> None:
    from embedloop.models.encoding import load_model

    prompted = resolve_base_model("", E5_PROMPTS)
    assert prompted != minilm() and resolve_base_model("", E5_PROMPTS) == prompted
    config = json.loads((Path(prompted) / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == dict(E5_PROMPTS)
    original = json.loads((Path(minilm()) / "config_sentence_transformers.json").read_text())
    assert not original.get("prompts")  # the bundled package is untouched
    model = load_model(prompted, device="cpu")
    assert model.prompts == dict(E5_PROMPTS)


def test_the_settings_say_it_in_embedloop_toml(tmp_path: Path) -> None:
    config = tmp_path / "embedloop.toml"
    config.write_text('[embedloop]\nbase_model = "intfloat/multilingual-e5-small"\n'
                      '[embedloop.prompts]\nquery = "query: "\ndocument = "passage: "\n')
    settings = load_settings(config)
    assert settings.base_model == "intfloat/multilingual-e5-small"  # not made a path
    assert settings.prompts == dict(E5_PROMPTS)
    config.write_text('[embedloop]\n[embedloop.prompts]\npassage = "passage: "\n')
    with pytest.raises(ConfigError, match="unknown role 'passage'"):
        load_settings(config)
    with pytest.raises(ConfigError, match="must be a string"):
        check_prompts({"query": 3})  # type: ignore[dict-item]
