"""Sweeps on a cluster: planning and submitting a multirun (sweep), the one place that talks to Slurm (cluster),
the login-node checks and the preflight a sweep passes before anything is submitted (checks, preflight), what a
sweep does when it ends (callbacks), and the verbs that read or re-score a sweep (status, rescore)."""
