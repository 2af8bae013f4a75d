"""Student networks, evaluation protocols (Ray Train) and sweeps (Ray Tune)."""
