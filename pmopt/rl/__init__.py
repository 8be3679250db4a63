"""pmopt.rl: reinforcement learning against a reward with a KL leash to the reference (docs/ARCHITECTURE.md §7).

- `ppo.py`         `pmopt ppo` (both methods) and pmopt's own PPO loop, read top to bottom
- `rloo.py`        `method: rloo`: TRL's RLOOTrainer behind the same config, probes and curve rows
- `setup.py`       what both methods share before their loop: input checks, config.yaml + manifest, threads,
                   the reward (`pmopt.rewards`) and the data source's gold reward
- `prompts.py`     training prompts (a file or a source's generator through `pmopt.sources`), per-step indices
- `batches.py`     packed query + response batches, log-probs, values, sequence KL
- `models.py`      policy, frozen reference and value model (full or LoRA), dropout off
- `evaluation.py`  probes at fixed steps -> metrics rows and curve rows (`pmopt.records`, `pmopt.stats`)
- `checkpoint.py`  step checkpoints (`step-NNNNNN`), resume, the exported policy
- `ppo_math.py`    the PPO math as small pure functions
- `config.py`      `PPOConfig`, the typed config of both methods
"""
