"""The sample serverless functions (handlers) and their CloudEvents server, `serve`.

Standard library only, so that the container images need nothing but Python.
"""
