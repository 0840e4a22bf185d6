"""Distil a teacher's cohorts into the per-client ranker (``qflgym llm sft`` with ``head: rank``).

Every recorded decision is one example: the prompt's token ids, the position of each client row's last token
(:func:`~qflgym.agents.llm.ranker.tokenize_rows`), the teacher's cohort and the available clients. A
``transformers.Trainer`` whose ``compute_loss`` is :func:`~qflgym.agents.llm.ranker.rank_loss` fits the adapter
(AdamW with the linear schedule and the CPU-safe settings of the TRL runs). With a ``temperature``, the target is
the teacher's soft cohort membership (:func:`~qflgym.agents.llm.ranker.membership_targets` of its raw action, one
score per client) and the loss :func:`~qflgym.agents.llm.ranker.membership_loss`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import Trainer

from qflgym.agents.llm.codec import TextCodec
from qflgym.agents.llm.ranker import (
    answer_direction,
    check_rank_spec,
    membership_loss,
    membership_targets,
    pad_id,
    pad_rows,
    rank_loss,
    row_scores,
    tokenize_rows,
)
from qflgym.config import ConfigError

__all__ = ["RankTrainer", "ranking_examples"]


def ranking_examples(
    records: list[dict[str, Any]],
    observations: list[np.ndarray],
    codec: TextCodec,
    tokenizer: Any,
    labels: list[np.ndarray] | None = None,
    temperature: float | None = None,
) -> list[dict[str, list]]:
    """One example per recorded decision with at least one available chosen client (soft: more than k available).

    Args:
        records: The rollout's ``prompt`` / ``completion`` records.
        observations: The observation of each record.
        codec: The env's text codec (parses the teacher's completion, reads availability).
        tokenizer: The model's (fast) tokenizer.
        labels: The teacher's raw action of each record (needed with ``temperature``).
        temperature: Soft targets: the teacher's cohort membership at this temperature (None: its cohort).

    Raises:
        ConfigError: With ``temperature``, if the labels are missing or not one score per client.
    """
    k = check_rank_spec(codec)
    if temperature is not None and (labels is None or len(labels) != len(records)):
        raise ConfigError("target_temperature needs the teacher's raw action of every recorded decision")
    examples = []
    for i, (record, obs) in enumerate(zip(records, observations, strict=True)):
        valid = codec.available(obs)
        if temperature is None:
            chosen = np.asarray(codec.parse(record["completion"], obs, count=False).decision.selected, dtype=bool)
            target = (chosen & valid).astype(np.float32)
            if not target.any():
                continue
        else:
            if labels[i].shape != valid.shape:
                raise ConfigError(
                    f"target_temperature needs a teacher acting with one score per client ({valid.shape}), "
                    f"got an action of shape {labels[i].shape}"
                )
            if valid.sum() <= k:
                continue
            mask = torch.as_tensor(valid, dtype=torch.float32)[None]
            target = membership_targets(torch.as_tensor(labels[i], dtype=torch.float32)[None], mask, k, temperature)
            target = target[0].numpy()
        ids, positions = tokenize_rows(tokenizer, codec, record["prompt"])
        examples.append(
            {
                "input_ids": ids,
                "positions": positions,
                "target": target.tolist(),
                "valid": valid.astype(np.float32).tolist(),
            }
        )
    return examples


class RankTrainer(Trainer):
    """``transformers.Trainer`` with the ranking loss; batches are padded by :meth:`collate`.

    Args:
        tokenizer: The model's tokenizer (padding id, answer direction).
        membership_k: With soft targets, the cohort size of :func:`membership_loss`; None: :func:`rank_loss`.
    """

    def __init__(self, *args: Any, tokenizer: Any, membership_k: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, data_collator=self.collate, **kwargs)
        self.pad = pad_id(tokenizer)
        self.membership_k = membership_k
        self.direction = answer_direction(self.model, tokenizer).detach()

    def collate(self, batch: list[dict[str, list]]) -> dict[str, torch.Tensor]:
        """Right-pad the token ids; stack positions, targets and validity."""
        ids, mask = pad_rows([b["input_ids"] for b in batch], self.pad)
        out = {"input_ids": ids, "attention_mask": mask}
        for key, dtype in (("positions", torch.long), ("target", torch.float32), ("valid", torch.float32)):
            out[key] = torch.tensor([b[key] for b in batch], dtype=dtype)
        return out

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """The ranking loss of the batch's row scores (and the scores, with ``return_outputs``)."""
        scores = row_scores(model, inputs["input_ids"], inputs["attention_mask"], inputs["positions"], self.direction)
        if self.membership_k is None:
            loss = rank_loss(scores, inputs["target"], inputs["valid"])
        else:
            loss = membership_loss(scores, inputs["target"], inputs["valid"], self.membership_k)
        return (loss, scores) if return_outputs else loss
