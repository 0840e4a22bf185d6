"""``LLMPolicy``: a causal language model behind Stable-Baselines3's ``predict`` protocol.

Each decision renders the observation as a prompt (:class:`~qflgym.agents.llm.codec.TextCodec`), generates a short
completion and parses it into the env's action. Decoding is **constrained** by default: a hand-written loop over
the model body with a KV cache, where each step scores only the tokens the grammar allows next
(:class:`~qflgym.agents.llm.grammar.TokenConstraint`) — the LM head is evaluated on those few rows instead of the
whole vocabulary (262k rows for Gemma-3), generation stops as soon as the grammar leaves EOS as the only choice,
and a batch of observations (one per sub-env of a ``VecEnv``) is decoded together. Decoding one token costs a read
of every weight, so each forward pass also feeds a **draft** of the next tokens (the grammar's only option besides
EOS, and the continuation of the policy's last completion — prompt-lookup decoding) and keeps the longest prefix
that step-by-step decoding would have produced: the same completions, greedy or sampled, in fewer passes. With
``constrained=False`` the policy uses ``model.generate`` and relies on the parser's fallbacks; either way
``invalid_rate`` is tracked.

Saved policies are directories written by :func:`save_policy` (adapter weights + ``qflgym_llm.json``) and loaded
with :func:`load_policy` / :meth:`LLMPolicy.from_pretrained`, by ``qflgym llm eval`` and by the benchmark harness
(controller ``llm`` with ``path=...``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qflgym.agents.llm.codec import CodecConfig, TextCodec
from qflgym.agents.llm.grammar import ActionGrammar, TokenConstraint
from qflgym.agents.llm.quantize import check_quantize, quantize_body
from qflgym.agents.llm.text_policy import TextPolicy, causal_lm

__all__ = ["POLICY_META", "LLMPolicy", "load_policy", "save_policy"]

#: Name of the metadata file of a saved policy directory.
POLICY_META = "qflgym_llm.json"


class LLMPolicy(TextPolicy):
    """An LLM acting on a qflgym env through the text codec.

    Args:
        model: A causal LM (optionally a PEFT model).
        tokenizer: Its tokenizer.
        codec: The env's text codec.
        constrained: Grammar-constrained decoding (default) or free ``generate`` + parser fallbacks.
        max_new_tokens: Generation budget (default: enough for the longest canonical completion).
        temperature: Sampling temperature when ``deterministic=False``.
        batch_size: Observations decoded together.
        seed: Seed of the sampling generator.
        lookahead: Most draft tokens fed after a chosen one in the same forward pass (see :meth:`_draft`; 0: off).

    Attributes:
        decision_times: Seconds per decision of every ``predict`` call (a batch's time divided by its size).
        forward_passes: Forward passes of the model so far (constrained decoding; prefill included).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        codec: TextCodec,
        *,
        constrained: bool = True,
        max_new_tokens: int | None = None,
        temperature: float = 1.0,
        batch_size: int = 16,
        seed: int | None = 0,
        lookahead: int = 8,
    ) -> None:
        super().__init__(codec)
        self.model = model
        self.tokenizer = tokenizer
        self.constrained = constrained
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        self.grammar = ActionGrammar(codec.spec, codec.config.lr_digits)
        self.constraint = TokenConstraint(self.grammar, tokenizer) if constrained else None
        self.max_new_tokens = max_new_tokens or self._default_budget()
        self._forced: tuple[list[int], Any] | None = None
        self.lookahead = int(lookahead)
        self.forward_passes = 0
        self._previous: dict[int, list[int]] = {}
        lm = causal_lm(model)
        self._body = getattr(lm, lm.base_model_prefix)
        self._head = lm.get_output_embeddings()
        self._softcap = getattr(lm.config, "final_logit_softcapping", None)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        model.eval()

    def _default_budget(self) -> int:
        spec = self.codec.spec
        full = self.codec.render(
            self.codec._build(None, {"select": np.ones(spec.n_clients, bool)} if spec.select else {})
        )
        return len(self.tokenizer(full, add_special_tokens=False).input_ids) * 2 + 8

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | Path, env: Any, **kwargs: Any) -> LLMPolicy:
        """Load a policy saved by :func:`save_policy` for ``env`` (see :func:`load_policy`)."""
        return load_policy(path, env, **kwargs)

    @classmethod
    def from_model_name(
        cls,
        name: str,
        env: Any,
        *,
        seed: int = 0,
        codec_config: CodecConfig | None = None,
        dtype: Any = "float32",
        **kwargs: Any,
    ) -> LLMPolicy:
        """An untrained policy from a registered model name (``tiny``, ``gemma3-270m``) or checkpoint path."""
        from qflgym.agents.llm.models import load_model

        model, tokenizer = load_model(name, seed=seed, dtype=dtype)
        return cls(model, tokenizer, TextCodec.from_env(env, codec_config), seed=seed, **kwargs)

    # --------------------------------------------------------------------------------------- generation
    def generate(self, prompts: Sequence[str], deterministic: bool = True) -> list[str]:
        """Completions for ``prompts`` (constrained or free, per the policy's setting)."""
        ids, _ = self.generate_ids(prompts, deterministic)
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in ids]

    def generate_ids(self, prompts: Sequence[str], deterministic: bool = True) -> tuple[list[list[int]], list[bool]]:
        """Completion token ids (EOS excluded) for ``prompts``, and whether each ended with EOS."""
        ids: list[list[int]] = []
        finished: list[bool] = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[i : i + self.batch_size])
            gen = self._generate_constrained if self.constrained else self._generate_free
            out, done = gen(chunk, deterministic)
            ids += out
            finished += done
        return ids, finished

    @torch.inference_mode()
    def _generate_free(self, prompts: list[str], deterministic: bool) -> tuple[list[list[int]], list[bool]]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        kwargs: dict[str, Any] = {"do_sample": not deterministic, "max_new_tokens": self.max_new_tokens}
        if not deterministic:
            kwargs |= {"temperature": self.temperature, "top_k": 0, "top_p": 1.0}
        gen = self.model.generate(**enc, pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        eos = self.tokenizer.eos_token_id
        ids, finished = [], []
        for row in gen[:, enc.input_ids.shape[1] :].tolist():
            if eos in row:
                ids.append(row[: row.index(eos)])
                finished.append(True)
            else:
                ids.append(row)
                finished.append(False)
        return ids, finished

    def _forced_prefix(self) -> tuple[list[int], Any]:
        """Tokens the grammar forces before the first choice (e.g. `` select``), and the state after them."""
        assert self.constraint is not None
        state = self.constraint.start()
        forced: list[int] = []
        while len(forced) < self.max_new_tokens:
            allowed, nexts = self.constraint.allowed(state)
            if allowed.numel() != 1 or int(allowed[0]) == self.constraint.eos_token_id:
                break
            forced.append(int(allowed[0]))
            state = nexts[0]
        return forced, state

    def _draft(self, state: Any, tokens: list[int], previous: list[int]) -> list[tuple[int, Any]]:
        """Tokens to feed after the chosen one, ahead of their verification, with the grammar state after each.

        A draft token is the grammar's only option besides EOS (the space after a client id), or else the token
        that followed the same two tokens in ``previous`` (this row's last completion: prompt-lookup decoding; a
        controller often repeats much of its last decision). Every draft token is legal in its state; at most
        :attr:`lookahead` of them.
        """
        assert self.constraint is not None
        eos = self.constraint.eos_token_id
        key = tokens[-2:]
        guess = list(previous)  # no tokens yet: the last completion from its start
        if key:  # after the last occurrence of the latest two tokens
            ends = [i + len(key) for i in range(len(previous) - len(key) + 1) if previous[i : i + len(key)] == key]
            guess = previous[ends[-1] :] if ends else []
        draft: list[tuple[int, Any]] = []
        current = state
        while len(draft) < self.lookahead:
            allowed, nexts = self.constraint.allowed(current)
            ids = allowed.tolist()
            options = ids[:-1] if ids and ids[-1] == eos else ids
            if guess and guess[0] in options:
                token = guess.pop(0)
            elif len(options) == 1:
                token, guess = options[0], []
            else:
                break
            current = nexts[ids.index(token)]
            draft.append((token, current))
        return draft

    def _pick(self, hidden: torch.Tensor, allowed: torch.Tensor, deterministic: bool) -> int:
        """Index into ``allowed`` of the next token, scoring only those rows of the LM head."""
        if allowed.numel() == 1:
            return 0
        logits = hidden @ self._head.weight[allowed].T
        bias = getattr(self._head, "bias", None)
        if bias is not None:
            logits = logits + bias[allowed]
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        if deterministic:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / max(self.temperature, 1e-5), -1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    @torch.inference_mode()
    def _generate_constrained(self, prompts: list[str], deterministic: bool) -> tuple[list[list[int]], list[bool]]:
        """Grammar-constrained decoding with a KV cache and verified drafts (see the module docstring).

        Identical prompts (a GRPO group) are prefilled once and their cache rows repeated; the tokens the grammar
        forces at the start are appended to the prompts, so they cost no decoding step. Each later forward pass
        feeds the chosen token and its draft (:meth:`_draft`); the outputs are then walked in order: at each
        position the next token is picked exactly as step-by-step decoding would pick it (argmax, or a sample,
        over the grammar's allowed tokens), and the walk goes on while the pick equals the draft. The first pick
        that differs is the next chosen token; the draft positions after it are masked out of the cache. Rows
        feeding fewer tokens are right-padded with masked positions.
        """
        assert self.constraint is not None
        tok = self.tokenizer
        if self._forced is None:
            self._forced = self._forced_prefix()
        forced, start_state = self._forced
        unique = list(dict.fromkeys(prompts))
        enc = tok(unique, return_tensors="pt", padding=True)
        input_ids, mask = enc.input_ids, enc.attention_mask
        if forced:
            extra = torch.tensor([forced] * len(unique), dtype=input_ids.dtype)
            input_ids = torch.cat([input_ids, extra], dim=1)
            mask = torch.cat([mask, torch.ones_like(extra, dtype=mask.dtype)], dim=1)
        n = len(prompts)
        states = [start_state] * n
        done = [False] * n
        finished = [False] * n
        tokens: list[list[int]] = [list(forced) for _ in range(n)]
        drafts: list[list[tuple[int, Any]]] = [[] for _ in range(n)]
        eos = self.constraint.eos_token_id
        pad = tok.pad_token_id
        expand = None if len(unique) == n else torch.tensor([unique.index(p) for p in prompts])
        prompt_width = input_ids.shape[1]
        if expand is None:  # the prefill verifies a draft of the first tokens too (a GRPO group shares its prefill)
            drafts = [self._draft(start_state, tokens[b], self._previous.get(b, [])) for b in range(n)]
            input_ids, mask = self._append_right(input_ids, mask, [[t for t, _ in d] for d in drafts], pad)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        next_pos = positions[:, -1] + 1
        past = None
        step_ids, step_pos = input_ids, positions
        prefill = True
        while True:
            out = self._body(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=past,
                use_cache=True,
            )
            self.forward_passes += 1
            past = out.past_key_values
            hidden = out.last_hidden_state
            if prefill:  # from the prompt's last position on (the draft's positions follow it)
                hidden = hidden[:, prompt_width - 1 :]
                prefill = False
            if expand is not None:  # after the shared prefill: one cache row per completion
                past.reorder_cache(expand)
                hidden, mask, next_pos = hidden[expand], mask[expand], next_pos[expand]
                expand = None
            width = hidden.shape[1]
            feeds: list[list[int]] = []
            for b in range(n):
                feeds.append([])
                if done[b]:
                    continue
                k = 0
                while True:  # walk the outputs: accept draft tokens while the picks agree
                    allowed, nexts = self.constraint.allowed(states[b])
                    if allowed.numel() == 0:  # dead end (cannot happen for a consistent grammar): stop here
                        done[b] = True
                        break
                    j = self._pick(hidden[b, k], allowed, deterministic)
                    token = int(allowed[j])
                    if k < len(drafts[b]) and token == drafts[b][k][0]:
                        tokens[b].append(token)
                        states[b] = nexts[j]
                        k += 1
                        continue
                    break
                if k + 1 < width:  # draft positions after the first disagreement: never attend
                    mask[b, mask.shape[1] - width + k + 1 :] = 0
                next_pos[b] -= len(drafts[b]) - k
                if done[b]:
                    continue
                if token == eos:
                    done[b] = finished[b] = True
                    continue
                tokens[b].append(token)
                states[b] = nexts[j]
                following, _ = self.constraint.allowed(states[b])
                if following.numel() == 1 and int(following[0]) == eos:
                    done[b] = finished[b] = True  # only EOS can follow: finished without another forward pass
                    continue
                if len(tokens[b]) >= self.max_new_tokens:
                    done[b] = True
                    continue
                previous = self._previous.get(b, [])
                drafts[b] = self._draft(states[b], tokens[b], previous)[: self.max_new_tokens - len(tokens[b])]
                feeds[b] = [token] + [t for t, _ in drafts[b]]
            if all(done):
                break
            empty = torch.empty((n, 0), dtype=input_ids.dtype)
            step_ids, step_mask = self._append_right(empty, mask[:, :0], feeds, pad)
            mask = torch.cat([mask, step_mask], dim=1)
            step_pos = next_pos[:, None] + torch.arange(step_ids.shape[1])
            next_pos = next_pos + step_mask.sum(-1)
        self._previous = dict(enumerate(tokens))
        return tokens, finished

    @staticmethod
    def _append_right(
        ids: torch.Tensor, mask: torch.Tensor, rows: list[list[int]], pad: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids``/``mask`` with each row's tokens appended, right-padded with masked ``pad`` positions."""
        width = max((len(r) for r in rows), default=0)
        extra = torch.full((len(rows), width), pad, dtype=ids.dtype)
        extra_mask = torch.zeros((len(rows), width), dtype=mask.dtype)
        for b, row in enumerate(rows):
            extra[b, : len(row)] = torch.tensor(row, dtype=ids.dtype)
            extra_mask[b, : len(row)] = 1
        return torch.cat([ids, extra], dim=1), torch.cat([mask, extra_mask], dim=1)

    # ------------------------------------------------------------------------------------------ predict
    def complete(self, batch: np.ndarray, deterministic: bool) -> list[str]:
        """Constrained completions of ``batch``'s prompts: greedy, or sampled at :attr:`temperature`."""
        return self.generate(self.codec.prompts(batch), deterministic=deterministic)

    def reset_drafts(self) -> None:
        """Forget the last completions, the source of :meth:`_draft`'s guesses (outputs do not change)."""
        self._previous = {}


# ---------------------------------------------------------------------------------------------- save/load


def save_policy(
    path: str | Path,
    model: Any,
    *,
    model_name: str,
    adapter_name: str,
    codec_config: CodecConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a fine-tuned policy directory: ``adapter/`` (adapter weights) and ``qflgym_llm.json``.

    Args:
        path: Output directory.
        model: The adapted model (e.g. a ``PeftModel``).
        model_name: Base model name or checkpoint path (what :func:`~qflgym.agents.llm.models.load_model` takes).
        adapter_name: Adapter registry name (``lora``, ``qlora``, ...).
        codec_config: The prompt/grammar options the model was trained with.
        extra: More metadata (env id, teacher, trainer, ...).
    """
    from qflgym.agents.llm.adapters import ADAPTERS

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ADAPTERS.get(adapter_name).save(model, path / "adapter")
    meta = {
        "model": model_name,
        "adapter": adapter_name,
        "codec": asdict(codec_config),
        **(extra or {}),
    }
    (path / POLICY_META).write_text(json.dumps(meta, indent=2, default=str))
    return path


def load_policy(
    path: str | Path,
    env: Any,
    *,
    seed: int = 0,
    dtype: Any = None,
    merge: bool = True,
    quantize: str | None = None,
    **kwargs: Any,
) -> TextPolicy:
    """Load a saved policy for ``env``.

    The result is an :class:`LLMPolicy`, or an ``LLMRanker`` (:mod:`qflgym.agents.llm.ranker`) for a policy
    trained with ``head: rank``.

    Args:
        path: A directory written by :func:`save_policy`.
        env: The env (or VecEnv) the policy acts on (its layout and action codec build the text codec).
        seed: Seed of sampling (and of a randomly initialized base such as ``tiny``: use the training seed).
        dtype: Model dtype (a torch dtype or its name; default: the dtype the policy was trained in, else float32).
        merge: Fold the adapter into the base weights (:meth:`Adapter.merge`, done in float32 before casting to
            ``dtype``): faster decisions, same outputs up to rounding. ``False`` keeps the adapter modules.
        quantize: Quantize the merged float32 body for inference (:mod:`~qflgym.agents.llm.quantize`; None: none).
            Faster decisions whose scores differ from the float policy's by the quantization error.
        **kwargs: :class:`LLMPolicy` options (``constrained``, ``temperature``, ...).

    Raises:
        FileNotFoundError: If ``path`` is not a saved policy.
        ValueError: If ``quantize`` is unknown, or set with ``merge=False`` or a ``dtype`` other than float32.
    """
    from qflgym.agents.llm.adapters import ADAPTERS
    from qflgym.agents.llm.models import load_model, resolve_dtype

    path = Path(path)
    meta_path = path / POLICY_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a saved LLM policy (no {POLICY_META})")
    meta = json.loads(meta_path.read_text())
    adapter = ADAPTERS.get(meta["adapter"])
    base_seed = int(meta.get("model_seed", seed))
    dtype = resolve_dtype(dtype or meta.get("dtype", "float32"))
    check_quantize(quantize, merge, dtype)
    model, tokenizer = load_model(
        meta["model"],
        seed=base_seed,
        dtype=torch.float32 if merge else dtype,
        progress=False,
        **adapter.base_model_kwargs(),
    )
    model = adapter.load(model, path / "adapter")
    if merge:
        model = adapter.merge(model).to(dtype)
    if quantize is not None:
        model = quantize_body(model, quantize)
    codec_options = dict(meta.get("codec", {}))
    codec = TextCodec.from_env(env, CodecConfig(**codec_options))
    if meta.get("head", "completion") == "rank":
        from qflgym.agents.llm.ranker import LLMRanker

        return LLMRanker(model, tokenizer, codec, seed=seed, **LLMRanker.options(kwargs))
    return LLMPolicy(model, tokenizer, codec, seed=seed, **kwargs)
