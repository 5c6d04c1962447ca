"""Fine-tuning with sentence-transformers: contrastive loss with in-batch negatives,
each anchor's term weighted by how sure the click model is that its positive is relevant."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from embedloop.config import TrainingConfig
from embedloop.errors import EmbedloopError
from embedloop.faults import crash_point, pause_point
from embedloop.models.base_models import model_prompts, role_prompt
from embedloop.models.encoding import autocast, load_model, resolve_precision

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class TrainingFailed(EmbedloopError):
    pass


def _crash_point_after_first_step() -> object:
    from transformers import TrainerCallback, TrainerState

    class CrashPoint(TrainerCallback):
        def on_step_end(self, args: object, state: TrainerState, control: object,
                        **kwargs: object) -> None:
            if state.global_step == 1:
                crash_point("train")
                pause_point("train")

    return CrashPoint()


@dataclass
class FineTuneResult:
    model: SentenceTransformer
    path: Path
    steps: int
    train_loss: float
    seconds: float
    precision: str
    device: str
    side: str = "full"  # "full": both encoders trained; "query": the query encoder only
    mixing: Mixing | None = None  # how much of the fine-tune the candidate keeps


def weighted_ranking_loss(model: SentenceTransformer) -> Any:
    """MultipleNegativesRankingLoss whose per-anchor terms are weighted by the batch's
    labels (the pairs' debiased relevance): a click the model is sure of teaches more than
    a borderline one. Equal weights give the stock loss."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    class WeightedMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
        def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor],
                                         labels: torch.Tensor | None) -> torch.Tensor:
            queries, docs = embeddings[0], torch.cat(embeddings[1:])  # docs: positives first
            scores = self.similarity_fct(queries, docs) * self.scale  # (batch, batch * k)
            target = torch.arange(len(queries), device=queries.device)
            per_anchor = F.cross_entropy(scores, target, reduction="none")  # (batch,)
            if labels is None:
                return per_anchor.mean()
            weights = labels.to(per_anchor.dtype)
            return (per_anchor * weights).sum() / weights.sum().clamp_min(1e-12)

    return WeightedMultipleNegativesRankingLoss(model)


def fine_tune(base_model: str, pairs: pd.DataFrame, output_dir: Path, cfg: TrainingConfig,
              *, device: str, max_seq_length: int | None = None,
              show_progress: bool = True) -> FineTuneResult:
    """Train `base_model` on (anchor, positive[, negative]) pairs with
    MultipleNegativesRankingLoss: every other positive in the batch is a negative, so
    batches never hold the same text twice (NO_DUPLICATES sampler). A `weight` column
    (debiased relevance) weights each anchor's term. Saves the model to
    `output_dir/model`."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    if len(pairs) < 2:
        raise TrainingFailed(f"need at least 2 training pairs, got {len(pairs)}")
    model = load_model(base_model, device=device, max_seq_length=max_seq_length)
    precision = resolve_precision(cfg.precision, device)
    # (anchor, positive[, negative]): MNRL uses every other positive and negative in the
    # batch as negatives for each anchor, plus the anchor's own hard negative.
    columns = [c for c in ("anchor", "positive", "negative") if c in pairs.columns]
    frame = pairs[columns].reset_index(drop=True)
    weighted = "weight" in pairs.columns
    if weighted:  # the trainer hands a column named "label" to the loss
        frame["label"] = pairs["weight"].fillna(1.0).astype("float32").to_numpy()
    dataset = Dataset.from_pandas(frame, preserve_index=False)
    batch_size = min(cfg.batch_size, len(pairs))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir / "trainer"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio (transformers v5)
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        # Each column gets its role's prompt ("query: " / "passage: " for e5), as
        # encode_query and encode_document give them; none for a model without prompts.
        prompts=_column_prompts(model, columns),
        # An asymmetric model (a query-side champion) trains each route on its own side.
        router_mapping=({"anchor": "query", "positive": "document", "negative": "document"}
                        if Towers.of(model).query is not Towers.of(model).document else None),
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, math.ceil(len(pairs) / batch_size / 5)),
        disable_tqdm=not show_progress,
    )
    # Widget examples are for a Hugging Face Hub model card, which no version publishes:
    # skipping them saves a pass over 1,000 pairs and a progress bar on every fine-tune.
    model.model_card_data.set_widget_examples = lambda dataset: None
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=(weighted_ranking_loss(model) if weighted
                                               else MultipleNegativesRankingLoss(model)),
                                         callbacks=[_crash_point_after_first_step()])
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    loss = float(output.training_loss)
    # A NaN gradient turns the weights to NaN while the logged loss can read 0 (seen with
    # a learning rate of 1e9): check the weights themselves, not only the mean loss.
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if not math.isfinite(loss) or broken:
        where = f"{len(broken)} weight tensors hold NaN/inf (first: {broken[0]})" if broken else ""
        raise TrainingFailed(f"training diverged (mean loss {loss:.4g}{'; ' if where else ''}"
                             f"{where}); the candidate is discarded")
    path = output_dir / "model"
    model.save(str(path))
    return FineTuneResult(model=model, path=path, steps=int(output.global_step), train_loss=loss,
                          seconds=seconds, precision=precision, device=device)


# -- query-side training: the document encoder (and every document vector) stays ------


@dataclass(frozen=True)
class Towers:
    """A model's query and document pipelines: the routes of an asymmetric model
    (sentence-transformers `Router`), or one pipeline serving both."""

    query: list[Any]
    document: list[Any]
    shared_tail: list[Any]  # modules after a Router, applied to both

    @classmethod
    def of(cls, model: SentenceTransformer) -> Towers:
        from sentence_transformers.base.modules import Router

        modules = list(model.children())
        if modules and isinstance(modules[0], Router):
            routes = modules[0].sub_modules
            if set(routes) != {"query", "document"}:
                raise TrainingFailed(f"query-side training needs a model with query and "
                                     f"document routes, not {sorted(routes)}")
            return cls(list(routes["query"]), list(routes["document"]), modules[1:])
        return cls(modules, modules, [])


def asymmetric(query: list[Any], document: list[Any], shared_tail: list[Any],
               device: str, prompts: dict[str, str] | None = None) -> SentenceTransformer:
    """One model that encodes queries with `query` and documents with `document`
    (`encode_query` / `encode_document`), saved and registered as one artifact, with the
    `prompts` of the model it came from (its document vectors were made with them)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router

    router = Router.for_query_document(query_modules=query, document_modules=document)
    return SentenceTransformer(modules=[router, *shared_tail], device=device,
                               prompts=prompts or None)


def _column_prompts(model: Any, columns: list[str]) -> dict[str, str] | None:
    prompts = {column: role_prompt(model, "query" if column == "anchor" else "document")
               for column in columns}
    return {c: p for c, p in prompts.items() if p} or None


def embed_queries(query_model: SentenceTransformer, texts: list[str], prompt: str,
                  precision: str = "fp32") -> Any:
    """Unit vectors of `texts` with gradients, made as `encode_query` makes them: the
    query prompt ("query: " for e5) prepended, and its length passed to a Pooling that
    leaves the prompt's tokens out (`include_prompt = false`); both done by `preprocess`."""
    import torch
    from sentence_transformers.util import batch_to_device

    features = batch_to_device(query_model.preprocess(texts, prompt=prompt or None),
                               query_model.device)
    with autocast(precision, str(query_model.device)):
        embedded = query_model(features)["sentence_embedding"]
    return torch.nn.functional.normalize(embedded.float(), dim=-1)


def query_side_loss(queries: Any, candidates: Any, excluded: Any, weights: Any | None,
                    scale: float = 20.0) -> Any:
    """MultipleNegativesRankingLoss against fixed document vectors: anchor i's positive
    is candidate i; every other candidate (the batch's positives and hard negatives) is a
    negative, except those `excluded` (the same document, or another click of the same
    query), which would teach the model to push a relevant document down."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    scores = (queries @ candidates.T) * scale  # (batch, n_candidates)
    scores = scores.masked_fill(excluded, float("-inf"))
    target = torch.arange(len(queries), device=queries.device)
    per_anchor = F.cross_entropy(scores, target, reduction="none")
    if weights is None:
        return per_anchor.mean()
    return (per_anchor * weights).sum() / weights.sum().clamp_min(1e-12)


def exclusions(positive_rows: Any, negative_rows: Any, qkeys: Any) -> Any:
    """(batch, 2 * batch) bool: for anchor i, the candidates that are not negatives for
    it. Candidates are the batch's positives then its hard negatives (-1 where a pair has
    none, always excluded)."""
    import torch

    batch = len(positive_rows)
    candidates = torch.cat([positive_rows, negative_rows])
    same_doc = candidates[None, :] == positive_rows[:, None]
    same_query = torch.zeros_like(same_doc)
    same_query[:, :batch] = qkeys[None, :] == qkeys[:, None]
    excluded = same_doc | same_query | (candidates < 0)[None, :]
    own = torch.arange(batch)
    excluded[own, own] = False  # the anchor's own positive is the target
    return excluded


def fine_tune_query_side(base_model: str, pairs: pd.DataFrame, doc_ids: list[str],
                         doc_vectors: np.ndarray, output_dir: Path, cfg: TrainingConfig, *,
                         device: str, max_seq_length: int | None = None,
                         show_progress: bool = True) -> FineTuneResult:
    """Train only the query encoder of `base_model`, against the document vectors its
    index already holds (`doc_vectors[i]` is `doc_ids[i]`): no document is encoded, in
    training or after it, and the result (an asymmetric model whose document route is
    the base model's, unchanged) searches the same index. `pairs` as for `fine_tune`,
    with `doc_id` and `negative_id` naming the documents."""
    import copy

    import torch
    from sentence_transformers import SentenceTransformer
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if len(pairs) < 2:
        raise TrainingFailed(f"need at least 2 training pairs, got {len(pairs)}")
    row_of = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    missing = sorted(set(pairs["doc_id"]) - set(row_of))
    if missing:
        raise TrainingFailed(f"{len(missing)} clicked documents are not in the index the "
                             f"query encoder is trained against (first: {missing[0]})")
    model = load_model(base_model, device=device, max_seq_length=max_seq_length)
    towers = Towers.of(model)
    # A copy: the document route must keep the weights that built the index.
    query_model = SentenceTransformer(modules=copy.deepcopy(towers.query + towers.shared_tail),
                                      device=device)
    if max_seq_length:
        query_model.max_seq_length = max_seq_length
    precision = resolve_precision(cfg.precision, device)

    vectors = torch.from_numpy(np.ascontiguousarray(doc_vectors, dtype=np.float32)).to(device)
    positives = torch.tensor([row_of[d] for d in pairs["doc_id"]])
    negatives = torch.tensor([row_of.get(d, -1) if isinstance(d, str) else -1
                              for d in pairs.get("negative_id", [None] * len(pairs))])
    qkeys = torch.tensor(pd.factorize(pairs["qkey"])[0])
    weights = (torch.tensor(pairs["weight"].fillna(1.0).to_numpy(), dtype=torch.float32)
               if "weight" in pairs.columns else None)
    anchors = list(pairs["anchor"])
    query_prompt = role_prompt(model, "query")

    batch_size = min(cfg.batch_size, len(pairs))
    per_epoch = math.ceil(len(pairs) / batch_size)
    steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(per_epoch * cfg.epochs))
    optimizer = torch.optim.AdamW(query_model.parameters(), lr=cfg.learning_rate,
                                  weight_decay=0.01)
    warmup = cfg.warmup_ratio if cfg.warmup_ratio >= 1 else cfg.warmup_ratio * steps
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(warmup), steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout: the same pairs and seed give the same model
    order: list[int] = []
    losses: list[float] = []
    query_model.train()
    started = time.perf_counter()
    for step in tqdm(range(steps), desc="query-side fine-tune", disable=not show_progress):
        if len(order) < batch_size:  # a fresh shuffle per epoch
            order += torch.randperm(len(pairs), generator=generator).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        rows = torch.tensor(batch)
        queries = embed_queries(query_model, [anchors[i] for i in batch], query_prompt,
                                precision)
        pos, neg = positives[rows], negatives[rows]
        candidates = vectors[torch.cat([pos, neg.clamp_min(0)])]
        loss = query_side_loss(queries, candidates, exclusions(pos, neg, qkeys[rows]).to(device),
                               None if weights is None else weights[rows].to(device))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(query_model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step == 0:
            crash_point("train")
            pause_point("train")
    seconds = time.perf_counter() - started
    query_model.eval()
    mean_loss = float(np.mean(losses))
    broken = [name for name, p in query_model.named_parameters() if not torch.isfinite(p).all()]
    if not math.isfinite(mean_loss) or broken:
        where = f"{len(broken)} weight tensors hold NaN/inf (first: {broken[0]})" if broken else ""
        raise TrainingFailed(f"training diverged (mean loss {mean_loss:.4g}"
                             f"{'; ' if where else ''}{where}); the candidate is discarded")
    tuned = list(query_model.children())
    query = tuned[:len(towers.query)]
    candidate = asymmetric(query, towers.document, towers.shared_tail, device,
                           prompts=model_prompts(model))
    path = output_dir / "model"
    candidate.save(str(path))
    return FineTuneResult(model=candidate, path=path, steps=steps, train_loss=mean_loss,
                          seconds=seconds, precision=precision, device=device, side="query")


# -- the recipe's fall-back: a mix of the parent and the fine-tune (WiSE-FT) ----------


@dataclass(frozen=True)
class Mixing:
    """What the recipe chose for a candidate, and why."""

    weight: float  # 0: the parent; 1: the fine-tune as trained
    scores: dict[float, float]  # mixing weight -> mean NDCG@10 on the tune queries
    p_worse: dict[float, float]  # mixing weight -> p that it ranks worse than the parent
    tune_queries: int
    why: str


def mix_query_side(parent: SentenceTransformer, tuned: SentenceTransformer,
                   weight: float) -> SentenceTransformer:
    """`tuned` with every weight of its query route moved to parent + weight * (tuned -
    parent) (Wortsman et al. 2022, WiSE-FT); the document route is both models' own, so
    the mix searches the same index. `parent`'s query pipeline must have `tuned`'s shape:
    `tuned` came from it by `fine_tune_query_side`."""
    import copy

    import torch

    source, target = Towers.of(parent), Towers.of(tuned)
    mixed = copy.deepcopy(target.query)
    for before, after, into in zip(source.query, target.query, mixed, strict=True):
        old, new = before.state_dict(), after.state_dict()
        into.load_state_dict({
            name: (old[name] + weight * (value - old[name])).to(value.dtype)
            if torch.is_floating_point(value) else value for name, value in new.items()})
    return asymmetric(mixed, target.document, target.shared_tail, str(tuned.device),
                      prompts=model_prompts(tuned))


def choose_mixing_weight(per_query: dict[float, np.ndarray], alpha: float = 0.05,
                         margin: float = 0.01) -> Mixing:
    """The largest share of the fine-tune whose mix ranks the tune queries no worse than
    the parent (weight 0): its mean loss at most `margin` (the judge's harm margin), and
    not credibly worse (one-sided paired sign-flip test at `alpha`).

    Not the best-scoring weight: click labels on a hundred queries cannot resolve the
    one-to-two-point gains a cycle makes (BENCHMARKS.md: the recipe), and chasing their
    noise threw those gains away. They do show a fine-tune that drifts, which is what
    the mix is for."""
    from embedloop.judge.significance import randomization_p_value

    parent = per_query[0.0]
    means = {w: float(np.mean(v)) for w, v in sorted(per_query.items())}
    p_worse = {w: 1.0 if w == 0.0 else randomization_p_value(parent - v)
               for w, v in sorted(per_query.items())}
    weight = max(w for w in means
                 if p_worse[w] >= alpha and means[0.0] - means[w] <= margin + 1e-12)
    n, top = len(parent), max(means)
    as_trained = (f"the fine-tune as trained {means[top]:.4f} against the parent's "
                  f"{means[0.0]:.4f} on {n} tune queries (p worse {p_worse[top]:.3f})")
    if weight == top:
        why = f"all of it: {as_trained}, no worse (loss within {margin:g}, not credible)"
    elif weight == 0.0:
        why = (f"none of it, every mix is worse (loss beyond {margin:g}, or credible): "
               f"{as_trained}; the candidate is the parent")
    else:
        why = (f"{weight:g} of it, the largest share no worse than the parent "
               f"({means[weight]:.4f}, p worse {p_worse[weight]:.3f}): {as_trained}")
    return Mixing(weight, means, p_worse, n, why)


def mix_by_score(parent: SentenceTransformer, tuned: SentenceTransformer,
                 weights: Sequence[float],
                 score: Callable[[SentenceTransformer], np.ndarray],
                 alpha: float = 0.05, margin: float = 0.01) -> tuple[SentenceTransformer, Mixing]:
    """Score the mix at every weight (`score`: per tune query, higher is better; the
    parent, weight 0, always among them) and keep the share `choose_mixing_weight` picks."""
    from tqdm.auto import tqdm

    scores = {float(w): score(mix_query_side(parent, tuned, w))
              for w in tqdm(sorted({0.0, *weights}), desc="mixing weights", leave=False)}
    mixing = choose_mixing_weight(scores, alpha, margin)
    return mix_query_side(parent, tuned, mixing.weight), mixing
