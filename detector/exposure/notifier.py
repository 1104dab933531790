"""POST NotificationData to a subscription's eventNotifyUri, with the CloudEvents delivery's retry rule.

Per subscription one queue, one POST in flight: its notifications arrive in order. Retried
(`mec_common.http.is_retryable`, as `detector.delivery`): connection errors, timeouts, 404, 408,
409, 429 and 5xx, after `backoff_delay` (base·2^(n−1) capped, jittered) or exactly `Retry-After`
(capped by `retry_after_cap`). 307 and 308 with a Location are followed (TS 29.564's callback
lists them), up to 3 hops. Any other answer drops the notification (logged). With `max_attempts`
N, a notification is dropped after N failed attempts. Pending notifications live in memory: they
are lost on a restart (the subscriptions are not), and those of a deleted subscription are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from detector.delivery import backoff_delay, is_retryable, retry_after_seconds

log = logging.getLogger("detector.exposure")
MAX_REDIRECTS = 3
QUEUE_CAP = 1000             # notifications waiting per subscription; the oldest goes first beyond it
REDIRECTS = frozenset({307, 308})


@dataclass(slots=True)
class Pending:
    uri: str
    body: bytes
    attempts: int = 0


@dataclass(slots=True)
class Outcome:
    status: int | None          # None: no HTTP answer
    retry_after: float | None
    reason: str


class Notifier:
    def __init__(self, *, timeout: float = 10.0, backoff_base: float = 0.2, backoff_cap: float = 30.0,
                 retry_after_cap: float = 300.0, max_attempts: int = 0) -> None:
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_after_cap = retry_after_cap
        self.max_attempts = max_attempts
        self._queues: dict[str, deque[Pending]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.retried = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.pending:
            log.warning("%d Nupf_EventExposure notifications not delivered at stop (dropped)", self.pending)
        self._queues.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def send(self, sub_id: str, uri: str, data: dict[str, Any]) -> None:
        """Queue a NotificationData for `uri` (the subscription's eventNotifyUri)."""
        q = self._queues.setdefault(sub_id, deque())
        if len(q) >= QUEUE_CAP:
            q.popleft()
            self.dropped += 1
            log.warning("subscription %s: %d notifications waiting, the oldest is dropped", sub_id, QUEUE_CAP)
        q.append(Pending(uri, json.dumps(data, separators=(",", ":")).encode()))
        if sub_id not in self._tasks and self._session is not None:
            self._tasks[sub_id] = asyncio.create_task(self._drain(sub_id), name=f"ee-notify-{sub_id}")

    def cancel(self, sub_id: str) -> None:
        """The subscription is deleted: drop what it still had to send."""
        task = self._tasks.pop(sub_id, None)
        if task is not None:
            task.cancel()
        self._queues.pop(sub_id, None)

    async def _drain(self, sub_id: str) -> None:
        q = self._queues[sub_id]
        try:
            while q:
                item = q[0]
                outcome = await self._post(item.uri, item.body)
                item.attempts += 1
                delay = self._settle(sub_id, q, item, outcome)
                if delay is not None:
                    await asyncio.sleep(delay)
        finally:
            if self._tasks.get(sub_id) is asyncio.current_task():
                del self._tasks[sub_id]
                if not q:
                    self._queues.pop(sub_id, None)

    def _settle(self, sub_id: str, q: deque[Pending], item: Pending, outcome: Outcome) -> float | None:
        """Take the item off the queue when it is done; else how long to wait before the next attempt."""
        status = outcome.status
        if status is not None and 200 <= status <= 299:
            q.popleft()
            self.delivered += 1
            return None
        retryable = status is None or is_retryable(status)
        if retryable and not (self.max_attempts and item.attempts >= self.max_attempts):
            self.retried += 1
            if outcome.retry_after is not None:
                return min(outcome.retry_after, self.retry_after_cap)
            return backoff_delay(item.attempts, self.backoff_base, self.backoff_cap)
        q.popleft()
        self.dropped += 1
        log.warning("subscription %s: notification to %s dropped after %d attempts: %s", sub_id, item.uri,
                    item.attempts, outcome.reason)
        return None

    async def _post(self, uri: str, body: bytes) -> Outcome:
        target = uri
        for _ in range(MAX_REDIRECTS + 1):
            outcome, location = await self._post_once(target, body)
            if location is None:
                return outcome
            target = location
        return Outcome(outcome.status, None, f"more than {MAX_REDIRECTS} redirects")

    async def _post_once(self, uri: str, body: bytes) -> tuple[Outcome, str | None]:
        """One POST: its outcome, and where a 307 / 308 points to (else None)."""
        assert self._session is not None
        try:
            async with self._session.post(uri, data=body, headers={"Content-Type": "application/json"},
                                          allow_redirects=False) as resp:
                await resp.read()
                location = resp.headers.get("Location") if resp.status in REDIRECTS else None
                ra = retry_after_seconds(resp.headers.get("Retry-After")) if resp.status >= 400 else None
                outcome = Outcome(resp.status, ra, f"HTTP {resp.status}")
                return outcome, str(URL(uri).join(URL(location))) if location else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            return Outcome(None, None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__), None
