"""Local Knative-compatible Broker and function runner (dev/test infrastructure).

Reads the Broker, Trigger and Knative Service manifests that the kind lab applies
(k8s/knative/) and behaves like Knative Eventing's MT channel-based broker and
Knative Serving's scale-from-zero for the project's sample functions. Production
is Knative; see docs/local-knative.md for what is and is not faithful.
"""

from testbed.broker.cli import add_broker_parser, run_broker

__all__ = ["add_broker_parser", "run_broker"]
