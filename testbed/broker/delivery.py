"""Sending one event to one destination with Knative's delivery rules.

Rules (knative.dev/eventing pkg/kncloudevents, 1.22):
- retried: connection errors and timeouts, 404, 408, 409, 429 and every 5xx; `retry`
  is the number of retries after the first try (none when unset);
- wait before retry i (0 for the first retry): exponential `delay * 2**i`, linear
  `delay * i`, nothing without both backoffPolicy and backoffDelay;
- `timeout` bounds each request; every request carries `Prefer: reply`;
- a 2xx answer with a non-empty body that is not a CloudEvent is a failure (the
  broker-filter answers 502 for it, and that is retried);
- after the last failure the event goes to the dead-letter sink (with the same
  retries) carrying knativeerrordest, knativeerrorcode and knativeerrordata (the
  answer's body in base64, at most 1024 characters).

How a 2xx answer is read depends on who sends (`AnswerRules`): the broker-filter in front
of a Trigger's subscriber never takes a 202 as a reply and fails a body that is not a
CloudEvent (`BROKER_FILTER`); the channel dispatcher behind a Subscription
(pkg/kncloudevents/event_dispatcher.go `executeRequest`: "Response is a non event, discard
it") takes a CloudEvent in any 2xx answer as the reply and discards any other body
(`CHANNEL_DISPATCHER`).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from mec_common.http import is_retryable
from testbed.broker.events import Event, EventError, parse_http, to_binary, to_structured
from testbed.broker.manifests import DeliverySpec

NO_RESPONSE = -1           # connection error or timeout
BAD_REPLY = 502            # what Knative's broker-filter answers for a non-CloudEvent body
ERROR_DATA_MAX = 1024      # attributes.KnativeErrorDataExtensionMaxLength
DEFAULT_REQUEST_TIMEOUT = 300.0
# config-br-defaults in a default Knative install
DEFAULT_BROKER_DELIVERY = DeliverySpec(retry=10, backoff_policy="exponential", backoff_delay=0.2)

Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[["Attempt"], None]


def retryable(status: int) -> bool:
    return status == NO_RESPONSE or is_retryable(status)


def backoff(spec: DeliverySpec | None, retry_index: int) -> float:
    """Seconds to wait before retry number `retry_index` (0-based), as Knative computes it."""
    if spec is None or spec.backoff_policy is None or spec.backoff_delay is None:
        return 0.0
    if spec.backoff_policy == "exponential":
        return spec.backoff_delay * (2**retry_index)
    return spec.backoff_delay * retry_index


@dataclass(frozen=True)
class AnswerRules:
    """How a sender reads a subscriber's 2xx answer."""

    reply_on_202: bool      # a CloudEvent in a 202 answer is a reply
    strict_body: bool       # a 2xx body that is not a (valid) CloudEvent is a failure (502)


BROKER_FILTER = AnswerRules(reply_on_202=False, strict_body=True)
CHANNEL_DISPATCHER = AnswerRules(reply_on_202=True, strict_body=False)


@dataclass
class Attempt:
    status: int                 # HTTP status, or NO_RESPONSE
    body: bytes = b""
    reply: Event | None = None  # a CloudEvent in a 2xx answer (never for 202 under BROKER_FILTER)
    error: str | None = None    # with `ok` (CHANNEL_DISPATCHER only): the answer held a malformed event

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Outcome:
    attempt: Attempt            # the last attempt
    tries: int


async def send_once(
    session: aiohttp.ClientSession, url: str, event: Event, *, structured: bool = False,
    timeout: float | None = None, rules: AnswerRules = BROKER_FILTER,
) -> Attempt:
    headers, body = to_structured(event) if structured else to_binary(event)
    headers["Prefer"] = "reply"
    try:
        async with session.post(
            url, data=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout or DEFAULT_REQUEST_TIMEOUT),
        ) as resp:
            payload = await resp.read()
            status = resp.status
            resp_headers = dict(resp.headers)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Attempt(NO_RESPONSE, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
    if not 200 <= status < 300 or (status == 202 and not rules.reply_on_202):
        return Attempt(status, payload)
    has_ce = any(k.lower().startswith("ce-") for k in resp_headers) or \
        resp_headers.get("Content-Type", "").lower().startswith("application/cloudevents")
    if not has_ce:
        if payload and rules.strict_body:
            return Attempt(BAD_REPLY, payload, error="answer body is neither empty nor a CloudEvent")
        return Attempt(status, payload)
    try:
        reply = parse_http(resp_headers, payload)
    except EventError as exc:
        return Attempt(BAD_REPLY if rules.strict_body else status, payload, error=f"malformed reply event: {exc}")
    return Attempt(status, payload, reply)


async def send_with_retries(
    session: aiohttp.ClientSession, url: str, event: Event, spec: DeliverySpec | None, *,
    structured: bool = False, sleep: Sleep = asyncio.sleep, on_retry: OnRetry | None = None,
    rules: AnswerRules = BROKER_FILTER,
) -> Outcome:
    """Try, and retry as `spec` says; `on_retry` hears of every try that will be retried."""
    retries = spec.retry if spec and spec.retry else 0
    timeout = spec.timeout if spec else None
    tries = 0
    while True:
        attempt = await send_once(session, url, event, structured=structured, timeout=timeout, rules=rules)
        tries += 1
        if attempt.ok or not retryable(attempt.status) or tries > retries:
            return Outcome(attempt, tries)
        if on_retry is not None:
            on_retry(attempt)
        await sleep(backoff(spec, tries - 1))


def dead_letter_event(event: Event, dest_url: str, failed: Attempt) -> Event:
    """The original event plus Knative's error extensions."""
    out = event.copy()
    out.attrs["knativeerrordest"] = dest_url
    out.attrs["knativeerrorcode"] = str(failed.status)
    data = base64.b64encode(failed.body).decode()[:ERROR_DATA_MAX]
    out.attrs["knativeerrordata"] = data
    return out
