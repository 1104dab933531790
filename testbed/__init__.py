"""testbed: the MEC serverless lab (sim, replay and the Docker/kind lab)."""

__version__ = "0.1.0"
