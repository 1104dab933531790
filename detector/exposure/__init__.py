"""Nupf_EventExposure (3GPP TS 29.564 V18.4.0) on the detector: USER_DATA_USAGE_MEASURES from AppEvents.

spec.py      the subset of TS 29.564 / 29.571 / 29.512 implemented here (the schemas live in
             detector/openapi.yaml, each with its 3GPP source), constants, what is left out and why
models.py    parsing and checking subscriptions (ProblemDetails with invalidParams), the parsed plan
jsonpatch.py RFC 6902 on a stored subscription
store.py     subscriptions in SQLite (a sibling of the outbox): they survive a restart
reporter.py  AppEvents -> measurements per subscription -> NotificationData
notifier.py  POST NotificationData to eventNotifyUri, retried as CloudEvents delivery is
service.py   the subscriptions' life cycle: create, modify, delete, ONE_TIME / PERIODIC / expiry
api.py       the routes under /nupf-ee/v1
"""
