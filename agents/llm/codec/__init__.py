"""Text codec of the LLM policy: observation → compact prompt, completion → action.

Modules: :mod:`.spec` (what the env controls, options, formats), :mod:`.text_codec` (:class:`TextCodec`),
:mod:`.parsing` (lenient field parsers), :mod:`.corpus` (the tokenizer corpus).

**Prompt.** One task line, the global state on one line, then a per-client table, then ``action:``::

    QFL control, round .06 of the budget. Choose the clients that train this round.
    acc .62 dacc .03 loss .45 lr .2 steps 1 bytes .12 time .3 shots 0 gap .18
    id size skew loss stale lat avail
    0 .52 .1 .81 .04 .3 1
    1 ...
    reply: select <ids>|none
    action:

On v1 envs (observations with the cost features) the table gains ``cost shotc noise labels`` (one local step's
time and shot cost, the device noise, and the classes holding >= 25 % of the client's data, e.g. ``31``) and the
global line ``spent`` (the share of the cost budget spent); v0 prompts are unchanged.

Numbers are rounded to :attr:`CodecConfig.decimals` decimals with the leading zero dropped (``.52``). The learning
rate is shown in its own units (the observation holds ``log10(lr / base lr)``), the local steps as an integer.

**Completion grammar** (only the fields the env controls, in this order, separated by ``" | "``)::

    action  := " " field (" | " field)*
    select  := "select " ( "none" | id (" " id)* )     ids ascending, each in [0, N)
    lr      := "lr " decimal                            within the env's learning-rate range
    steps   := "steps " integer                         within the env's local-steps range
    stop    := "stop " ("yes" | "no")

e.g. ``" select 1 4 7 | lr 0.05 | steps 2 | stop no"`` on ``QFL/FullControl-v0``, ``" select 1 4 7"`` on
``QFL/ClientSelection-v0``. The canonical rendering (:meth:`TextCodec.render`) is what the policy is trained to
emit and what constrained decoding (:mod:`qflgym.agents.llm.grammar`) enforces.

**Parsing** (:meth:`TextCodec.parse`) is lenient: case, extra spaces, ``:``/``=`` after keywords, commas between
ids, fields in any order, ``true/false/1/0`` for stop and text after the action are accepted. Each field the env
controls is checked on its own; when it is missing, malformed or out of range the **fallback** for that field is
used and the completion counts as invalid (:attr:`TextCodec.invalid_rate`):

* selection → every available client (when the env has a budget ``k``: the ``k`` available clients that waited
  longest, ties to the lower id); ids of unavailable clients are dropped (counted in ``masked``, not invalid);
  duplicates are merged; more than ``k`` ids → the first ``k`` listed, invalid;
* lr → the learning rate of the last round (read from the observation, clipped into the range);
* steps → the local steps of the last round (from the observation, clipped into the range);
* stop → ``no`` (garbage never ends an episode).

**Round trip.** ``parse(render(d)) == d`` on the controlled fields for every decision the env can represent, so
``action → decision → text → decision → action`` is exact for every env: discrete spaces exactly; the
learning rate is printed with :attr:`CodecConfig.lr_digits` significant digits (``None``: the shortest text that
reads back to the same float). ``FullControl`` snaps the lr to its grid, so 3 digits are exact there; on the
continuous ``StepSize`` box the default 4 digits round-trip within 0.05 % of the lr (exact with ``None``).
"""

from qflgym.agents.llm.codec.corpus import synthetic_corpus
from qflgym.agents.llm.codec.spec import (
    DEFAULT_CLIENT_COLUMNS,
    DEFAULT_GLOBAL_COLUMNS,
    ActionSpec,
    CodecConfig,
    ParseResult,
    format_lr,
    format_number,
)
from qflgym.agents.llm.codec.text_codec import TextCodec

__all__ = [
    "DEFAULT_CLIENT_COLUMNS",
    "DEFAULT_GLOBAL_COLUMNS",
    "ActionSpec",
    "CodecConfig",
    "ParseResult",
    "TextCodec",
    "format_lr",
    "format_number",
    "synthetic_corpus",
]
