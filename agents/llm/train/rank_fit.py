"""Distil a teacher's cohorts into the per-client ranker (``qflgym llm sft`` with ``head: rank``).

Every recorded decision is one example: the prompt's token ids, the position of each client row's last token
(:func:`~qflgym.agents.llm.ranker.tokenize_rows`), the teacher's cohort and the available clients. A
``transformers.Trainer`` whose ``compute_loss`` is :func:`~qflgym.agents.llm.ranker.rank_loss` fits the adapter
(AdamW with the linear schedule and the CPU-safe settings of the TRL runs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import Trainer

from qflgym.agents.llm.codec import TextCodec
from qflgym.agents.llm.ranker import answer_direction, pad_id, pad_rows, rank_loss, row_scores, tokenize_rows

__all__ = ["RankTrainer", "ranking_examples"]


def ranking_examples(
    records: list[dict[str, Any]], observations: list[np.ndarray], codec: TextCodec, tokenizer: Any
) -> list[dict[str, list]]:
    """One example per recorded decision with at least one available chosen client.

    Args:
        records: The rollout's ``prompt`` / ``completion`` records.
        observations: The observation of each record.
        codec: The env's text codec (parses the teacher's completion, reads availability).
        tokenizer: The model's (fast) tokenizer.
    """
    examples = []
    for record, obs in zip(records, observations, strict=True):
        chosen = np.asarray(codec.parse(record["completion"], obs, count=False).decision.selected, dtype=bool)
        valid = codec.available(obs)
        target = chosen & valid
        if not target.any():
            continue
        ids, positions = tokenize_rows(tokenizer, codec, record["prompt"])
        examples.append(
            {
                "input_ids": ids,
                "positions": positions,
                "target": target.astype(np.float32).tolist(),
                "valid": valid.astype(np.float32).tolist(),
            }
        )
    return examples


class RankTrainer(Trainer):
    """``transformers.Trainer`` with the listwise ranking loss; batches are padded by :meth:`collate`."""

    def __init__(self, *args: Any, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(*args, data_collator=self.collate, **kwargs)
        self.pad = pad_id(tokenizer)
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
        """:func:`rank_loss` of the batch's row scores (and the scores, with ``return_outputs``)."""
        scores = row_scores(model, inputs["input_ids"], inputs["attention_mask"], inputs["positions"], self.direction)
        loss = rank_loss(scores, inputs["target"], inputs["valid"])
        return (loss, scores) if return_outputs else loss
