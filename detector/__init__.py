"""detector: a Knative event source turning AppEvents into CloudEvents."""

__version__ = "0.1.0"
