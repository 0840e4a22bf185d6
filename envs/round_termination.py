"""``QFL/RoundTermination-v0``: decide after every round whether federated training should go on."""

from __future__ import annotations

from typing import Any

from .actions import ActionCodec, TerminationCodec
from .base import QFLEnv
from .config import merge_presets

__all__ = ["RoundTerminationEnv"]


class RoundTerminationEnv(QFLEnv):
    """Decide before every round whether federated training goes on.

    ## Description

    The quantum federation of `QFL/ClientSelection-v0` with a fixed selection rule (`selection_rule`)
    and a fixed step size (see `configs/envs/round_termination.yaml`); the controller decides before each
    round whether to run it or to stop training now. Every round costs bytes, device time and shots;
    stopping too early leaves accuracy on the table. An optimal-stopping problem.

    ## Action Space

    `Discrete(2)`: `0` runs the round, `1` stops (no round is run; the episode terminates).

    ## Observation Space

    The same as `QFL/ClientSelection-v0` (`21 N + 12` features; see `docs/envs/observation.md`).

    ## Rewards

    Named terms weighted by `reward_weights`, all in `info["rewards"]`: by default `accuracy_gain`,
    `communication_cost` and `wall_time_cost` on rounds (weights in `configs/envs/round_termination.yaml`),
    and `stop_accuracy` / `early_stop_penalty` (weight 0, reported) on the stopping step. Without a
    `target_accuracy` the episode only ends by stopping or truncation.

    ## Starting State

    As in `QFL/ClientSelection-v0`: a new federation per episode seed unless `federation_seed` is set.

    ## Episode End

    `terminated` when the controller stops or the validation accuracy reaches `target_accuracy`
    (the preset sets none); `truncated` after `round_budget` steps.

    ## Arguments

    `gym.make("QFL/RoundTermination-v0", config={...})`. Variants: `QFL/RoundTermination-Hard-v0`,
    `QFL/RoundTermination-Tiny-v0` (presets `hard`, `tiny`).

    ## Version History

    * v0: Initial version.
    * v1 (`QFL/RoundTermination-v1`, `-Hard`, `-Tiny`; preset `round_termination_v1`) over `configs/envs/v1.yaml`:
      the QPU federation `configs/federations/qpu.yaml` (24 clients, Dirichlet 0.3, finite shots, readout error,
      latencies over two orders of magnitude, availability 0.6-1), the v1 observation (`step_time`,
      `step_shot_cost` per client, `cost_spent`) and the operator's cost (wall time + `shot_price` x shots, in
      `info["cost"]`, objective in `info["objective"]`). Objective `error_plus_cost` = (1 - final test accuracy) +
      `cost_weight` x cost / `cost_scale`; the reward telescopes to its negative (validation instead of test
      accuracy). v0 is unchanged.
    """

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """Base defaults merged with ``configs/envs/round_termination.yaml``."""
        return merge_presets(super().default_config(), "round_termination")

    def _make_codec(self) -> ActionCodec:
        return TerminationCodec(self.n_clients, self._fixed_lr, self._fixed_steps)
