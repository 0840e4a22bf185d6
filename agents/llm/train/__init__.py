"""Fine-tuning the LLM policy with TRL.

Distillation (:mod:`.sft_trainer`, :mod:`.sft_config`) and GRPO (:mod:`.grpo_trainer`, :mod:`.grpo_config`),
with their shared settings (:mod:`.run_config`), teacher rollouts (:mod:`.rollout`), config-as-CLI and run
folders (:mod:`.cli_args`) and TRL hooks (:mod:`.trl_hooks`).
"""
