"""``LLMRanker``: the LLM as a per-client scorer -- one forward pass over the prompt, the top-k clients by score.

The generating policy (:class:`~qflgym.agents.llm.policy.LLMPolicy`) must write the ids of its cohort, so the
model learns a ranking of the whole client table through a few completion tokens per decision. The ranker reads
the same prompt (:class:`~qflgym.agents.llm.codec.TextCodec`) and scores every client row where the row ends:
the body's hidden state ``h_i`` at the row's last token, projected on the LM head's rows of two answer tokens,

    ``score_i = h_i . (w_yes - w_no)``     (the logit of " yes" over " no", without soft-capping),

so every row is supervised in every training example, no weights are added (LoRA adapts the body; the saved policy
is the adapter alone) and a decision costs one prefill and no decoding steps. The cohort is the ``cohort_size``
available clients with the highest scores (greedy), or a Plackett-Luce sample of them (Gumbel top-k at
:attr:`~LLMRanker.temperature`). The decoder is causal, so a row's score depends on the rows above it and on its
own, not on the rows below.

:func:`rank_loss` is the listwise objective of distillation (``qflgym llm sft`` with ``head: rank``): the
cross-entropy of the teacher's cohort under a softmax over the available rows. :func:`membership_loss` is the
soft alternative for a teacher that scores every client (``target_temperature``): each available row's probability
of being in the teacher's cohort, ``sigmoid(t_i / T)`` with the teacher's scores centred on its cohort's cutoff
(the equivariant policy's :func:`~qflgym.agents.policies.equivariant.centre_on_cohort`), is fitted by ``sigmoid``
of the ranker's scores centred the same way (Hinton et al.'s soft targets, per client). The chosen cohort is
written as the canonical completion and parsed by the codec, so the ranker's actions go through the same path as
generated ones.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
import torch

from qflgym.agents.llm.codec import TextCodec
from qflgym.agents.llm.text_policy import TextPolicy, causal_lm
from qflgym.agents.policies.equivariant import centre_on_cohort
from qflgym.config import ConfigError
from qflgym.envs.actions import ControlDecision

__all__ = [
    "ANSWER_TOKENS",
    "LLMRanker",
    "encode_rows",
    "membership_loss",
    "membership_targets",
    "pad_rows",
    "rank_loss",
    "row_scores",
    "tokenize_rows",
]

#: The answer tokens whose LM-head rows define the score direction (the first token of each).
ANSWER_TOKENS = (" yes", " no")


def check_rank_spec(codec: TextCodec) -> int:
    """The ranker's cohort size; raises :class:`ConfigError` unless the env only selects, at a fixed size."""
    spec = codec.spec
    if spec.fields != ("select",):
        raise ConfigError(f"head 'rank' needs an env that only selects clients; this one controls {spec.fields}")
    if spec.max_selected is None or spec.min_selected != spec.max_selected:
        raise ConfigError("head 'rank' needs cohort_size (the k of its top-k), got None")
    return int(spec.max_selected)


def answer_direction(model: Any, tokenizer: Any) -> torch.Tensor:
    """``w_yes - w_no`` of the LM head (float32), from the first token of each of :data:`ANSWER_TOKENS`."""
    ids = [tokenizer(t, add_special_tokens=False).input_ids[0] for t in ANSWER_TOKENS]
    if ids[0] == ids[1]:
        raise ValueError(f"the tokenizer maps {ANSWER_TOKENS} to the same first token")
    weight = causal_lm(model).get_output_embeddings().weight
    return (weight[ids[0]] - weight[ids[1]]).float()


def tokenize_rows(tokenizer: Any, codec: TextCodec, prompt: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and the index of each client row's last token (client 0 first)."""
    enc = tokenizer(prompt, return_offsets_mapping=True)
    starts = [start for start, _ in enc.offset_mapping]  # ascending: the last token starting before a row's end
    positions = [bisect.bisect_left(starts, end) - 1 for end in codec.client_row_ends(prompt)]
    return list(enc.input_ids), positions


def pad_rows(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[B, T]`` token ids and attention mask of token lists."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, : len(r)] = 1
    return ids, mask


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (its EOS id when it has none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_rows(tokenizer: Any, codec: TextCodec, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Token ids (right-padded), attention mask and ``[B, N]`` positions of each client row's last token."""
    rows, positions = zip(*(tokenize_rows(tokenizer, codec, p) for p in prompts), strict=True)
    ids, mask = pad_rows(list(rows), pad_id(tokenizer))
    return {"input_ids": ids, "attention_mask": mask, "positions": torch.tensor(positions, dtype=torch.long)}


def row_scores(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, direction: torch.Tensor
) -> torch.Tensor:
    """``[B, N]`` scores: the body's hidden states at ``positions`` projected on ``direction`` (float32)."""
    lm = causal_lm(model)
    body = getattr(lm, lm.base_model_prefix)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    picked = torch.gather(hidden, 1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
    return picked.float() @ direction


def rank_loss(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Listwise cross-entropy of the teacher's cohort: ``-mean_b sum_i t_bi log softmax_valid(s_b)_i / sum_i t_bi``.

    Args:
        scores: ``[B, N]`` row scores.
        target: ``[B, N]`` 1 for the teacher's chosen clients (each row with at least one).
        valid: ``[B, N]`` 1 for the rows that could be chosen (available clients).
    """
    logp = torch.log_softmax(scores.masked_fill(valid <= 0, float("-inf")), dim=-1)
    chosen = torch.where(target > 0, logp, torch.zeros_like(logp))
    return -(chosen.sum(-1) / target.sum(-1)).mean()


def membership_targets(teacher: torch.Tensor, valid: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """``[B, N]`` soft cohort membership: ``sigmoid(centre_on_cohort(teacher) / temperature)``, 0 if unavailable."""
    return torch.sigmoid(centre_on_cohort(teacher, k, valid) / temperature) * (valid > 0)


def membership_loss(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Binary cross-entropy of ``sigmoid(centre_on_cohort(scores))`` against ``target``, mean over available rows.

    Args:
        scores: ``[B, N]`` row scores.
        target: ``[B, N]`` probabilities of being in the teacher's cohort (:func:`membership_targets`).
        valid: ``[B, N]`` 1 for the available rows (more than ``k`` per row).
        k: Cohort size.
    """
    logits = centre_on_cohort(scores, k, valid)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * valid).sum() / valid.sum()


class LLMRanker(TextPolicy):
    """An LLM scoring the clients of a selection-only env (see the module docstring); SB3's ``predict``.

    Args:
        model: A causal LM (optionally a PEFT model).
        tokenizer: Its tokenizer (a fast one: rows are found through token offsets).
        codec: The env's text codec, with ``cohort_size`` set.
        temperature: Temperature of the Gumbel top-k sample when ``deterministic=False``.
        batch_size: Observations scored in one forward pass.
        seed: Seed of the sampling generator.

    Raises:
        ConfigError: If the env controls more than the selection or the codec has no ``cohort_size``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        codec: TextCodec,
        *,
        temperature: float = 1.0,
        batch_size: int = 16,
        seed: int | None = 0,
    ) -> None:
        super().__init__(codec)
        self.k = check_rank_spec(codec)
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        self.direction = answer_direction(model, tokenizer).detach()
        model.eval()

    @staticmethod
    def options(kwargs: dict[str, Any]) -> dict[str, Any]:
        """The ranker's share of :class:`~qflgym.agents.llm.policy.LLMPolicy` options (the others must be unset).

        Raises:
            ConfigError: If ``constrained`` is false or ``max_new_tokens`` / ``lookahead`` is set: a ranker
                generates nothing.
        """
        rest = dict(kwargs)
        unused = []
        if not rest.pop("constrained", True):
            unused.append("constrained=False")
        for name in ("max_new_tokens", "lookahead"):
            if rest.pop(name, None) is not None:
                unused.append(name)
        if unused:
            raise ConfigError(f"a ranking policy (head 'rank') generates no text; drop {', '.join(unused)}")
        return rest

    @torch.inference_mode()
    def scores(self, prompts: list[str]) -> torch.Tensor:
        """``[B, N]`` client scores of ``prompts``."""
        out = []
        for i in range(0, len(prompts), self.batch_size):
            enc = encode_rows(self.tokenizer, self.codec, prompts[i : i + self.batch_size])
            out.append(row_scores(self.model, **enc, direction=self.direction))
        return torch.cat(out)

    def cohort_order(self, scores: torch.Tensor, available: np.ndarray, deterministic: bool) -> list[int]:
        """The ``k`` chosen rows in order: the top-k available scores, or a Gumbel top-k sample of them.

        The sample is a Plackett-Luce draw without replacement from ``softmax(scores / temperature)`` over the
        available rows. Unavailable rows come last, only when fewer than ``k`` are available (the codec drops them).
        """
        s = scores.double()
        if not deterministic:
            u = torch.rand(s.shape, generator=self.generator, dtype=torch.float64).clamp_min(1e-300)
            s = s / self.temperature - torch.log(-torch.log(u))
        return sorted(range(len(s)), key=lambda i: (not available[i], -float(s[i]), i))[: self.k]

    def choose(self, scores: torch.Tensor, available: np.ndarray, deterministic: bool) -> np.ndarray:
        """``[N]`` bool cohort: the rows of :meth:`cohort_order`."""
        mask = np.zeros(len(scores), dtype=bool)
        mask[self.cohort_order(scores, available, deterministic)] = True
        return mask

    def complete(self, batch: np.ndarray, deterministic: bool) -> list[str]:
        """The canonical completion of each row's cohort: top-k scores, or a Gumbel top-k sample."""
        scores = self.scores(self.codec.prompts(batch))
        return [
            self.codec.render(ControlDecision(selected=self.choose(s, self.codec.available(o), deterministic)))
            for s, o in zip(scores, batch, strict=True)
        ]
