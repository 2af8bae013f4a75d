"""How a run reaches a Ray cluster: job submission, runtime env, resources."""
