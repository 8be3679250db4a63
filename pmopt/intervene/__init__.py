"""pmopt.intervene: Wei et al. 2023's synthetic-data intervention against sycophancy (`pmopt intervene`).

- `config`: the typed config; `data`: the training examples (from the base policy's data source);
- `sft`: fine-tuning on them with TRL's SFTTrainer; `measure`: probes and best-of-N on a policy;
- `compare`: before against after, with paired intervals; `command`: the stages, resume and seeds.
"""
