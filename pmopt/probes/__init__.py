"""pmopt.probes: sycophancy and truthfulness probes (docs/ARCHITECTURE.md §8; Sharma et al. 2023 §3).

`registry.get_probe(name)` gives a `base.Probe` (load / respond / grade / metrics, versioned);
`stats.bootstrap_metrics` gives 95% intervals over prompt clusters; `run.run_probes` probes a loaded
policy and `run.probe_command` is `pmopt probe`; `judges` holds the exact and LM judges.
"""
