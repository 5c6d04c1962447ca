"""Fine-tuning with sentence-transformers: contrastive loss with in-batch negatives,
each anchor's term weighted by how sure the click model is that its positive is relevant."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from embedloop.config import TrainingConfig
from embedloop.encoding import load_model, resolve_precision
from embedloop.errors import EmbedloopError
from embedloop.faults import crash_point, pause_point

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
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, math.ceil(len(pairs) / batch_size / 5)),
        disable_tqdm=not show_progress,
    )
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
