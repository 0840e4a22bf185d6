"""``QFL/StepSize-v0``: choose the local learning rate and local steps of each federated round."""

from __future__ import annotations

from typing import Any

from .actions import ActionCodec, StepSizeCodec
from .base import QFLEnv
from .config import merge_presets

__all__ = ["StepSizeEnv"]


class StepSizeEnv(QFLEnv):
    """Choose the local learning rate and local steps of each federated round.

    ## Description

    The quantum federation of `QFL/ClientSelection-v0`, but the controller sets the step size of local
    training: the learning rate (a log-scale multiplier of the federation's `training.lr`) and the number of
    local minibatch steps. Clients are selected by the configured `selection_rule` (see
    `configs/envs/step_size.yaml`; random rules draw from `np_random`). Larger steps make progress faster
    but cost device time and drift apart on non-IID data; too large learning rates diverge.

    ## Action Space

    `Box(-1, 1, (2,), float32)`:

    | index | meaning | decoding |
    |---|---|---|
    | 0 | learning rate | `lr = training.lr * low * (high / low) ** ((a + 1) / 2)` |
    | 1 | local steps | `round(s_min + (a + 1) / 2 * (s_max - s_min))` |

    with `[low, high] = lr_multiplier_range` and `[s_min, s_max] = local_steps_range`.

    With a range symmetric in log scale (`low * high = 1`), `a[0] = 0` is the federation's learning rate.

    ## Observation Space

    The same as `QFL/ClientSelection-v0` (`21 N + 12` features; see `docs/envs/observation.md`).

    ## Rewards

    Named terms weighted by `reward_weights`, all in `info["rewards"]`: by default `accuracy_gain`,
    `wall_time_cost` (the round's simulated seconds / a full round's at the fixed steps), `round_cost` and
    `target_bonus`, with the weights of `configs/envs/step_size.yaml`; the other built-in terms are reported
    with weight 0.

    ## Starting State

    As in `QFL/ClientSelection-v0`: a new federation per episode seed unless `federation_seed` is set.

    ## Episode End

    `terminated` when the validation accuracy reaches `target_accuracy`; `truncated` after `round_budget`
    rounds.

    ## Arguments

    `gym.make("QFL/StepSize-v0", config={...})`; relevant fields: `lr_multiplier_range`,
    `local_steps_range`, `selection_rule`, `clients_per_round`. Variants: `QFL/StepSize-Hard-v0`,
    `QFL/StepSize-Tiny-v0` (presets `hard`, `tiny`).

    ## Version History

    * v0: Initial version.
    * v1 (`QFL/StepSize-v1`, `-Hard`, `-Tiny`; preset `step_size_v1`) over `configs/envs/v1.yaml`: the QPU
      federation `configs/federations/qpu.yaml` (24 clients, Dirichlet 0.3, finite shots, readout error, latencies
      over two orders of magnitude, availability 0.6-1), the v1 observation (`step_time`, `step_shot_cost` per
      client, `cost_spent`) and the operator's cost (wall time + `shot_price` x shots, in `info["cost"]`,
      objective in `info["objective"]`). Objective `cost_to_target`; a round carries 1 s of server time
      (communication), local steps 1-8. v0 is unchanged. In its first form v1's lr range (0.1-10 x 0.3) ended
      below the divergence, so the best constant sat at its top; since 2026-12-02 the base lr is 1.0 and the range
      (up to lr 10) contains the divergence (lr 4-5 on most seeds).
    """

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """Base defaults merged with ``configs/envs/step_size.yaml``."""
        return merge_presets(super().default_config(), "step_size")

    def _make_codec(self) -> ActionCodec:
        return StepSizeCodec(self.n_clients, self.lr_map, self.config.local_steps_range)
