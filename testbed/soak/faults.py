"""The soak run's faults: what can go wrong, when, for how long.

A schedule is a list of :class:`Fault`; ``default_schedule`` spreads one of each kind over
the run and leaves its last fifth quiet, so that whatever a fault delayed can still arrive
before the run is judged. ``parse_schedule`` reads ``kind@at:duration,…`` from the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# kind -> (what it does, how long it lasts by default in seconds)
FAULT_KINDS: dict[str, tuple[str, float]] = {
    "kill_tap": ("kill -9 of upf-tap live, restarted after the down time", 2.0),
    "kill_detector": ("kill -9 of the detector, restarted after the down time", 3.0),
    "kill_broker": ("kill -9 of the local broker (its functions die with it), restarted after the down time", 3.0),
    "kill_function": ("kill -9 of the running function processes (the broker starts them again)", 0.0),
    "sink_503": ("the detector's sink answers 503 to everything", 10.0),
    "sink_429": ("the detector's sink answers 429 with Retry-After: 1", 10.0),
    "n3_loss": ("5 % of the G-PDUs on N3 lost, both ways", 15.0),
    "n3_delay": ("N3 delayed 40 ms ± 10 ms each way", 15.0),
    "n3_reorder": ("20 % of the G-PDUs on N3 held back 15 ms, so later ones overtake them", 15.0),
    "disk_full": ("the detector's disk (its outbox's file system) filled to the last byte while its sink "
                  "answers 503, so the outbox must grow", 15.0),
}
QUIET_TAIL = 0.2  # the last fifth of the run has no faults


@dataclass
class Fault:
    kind: str
    at: float                      # seconds after the UE load starts
    duration: float                # how long it lasts (the down time, for a kill)
    started: float | None = None   # epoch seconds when it was applied
    ended: float | None = None     # and when it was over (the part restarted, the storm ended)
    detail: dict[str, Any] = field(default_factory=dict)  # what it did (pids killed, bytes written…)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ScheduleError(ValueError):
    pass


def default_schedule(seconds: float, kinds: list[str] | None = None) -> list[Fault]:
    """One fault of each kind, evenly spaced over the first 80 % of a ``seconds`` run; each
    lasts its default, shortened to at most 60 % of the gap between faults."""
    kinds = list(FAULT_KINDS) if kinds is None else kinds
    if not kinds:
        return []
    span = seconds * (1 - QUIET_TAIL)
    gap = span / (len(kinds) + 1)
    out = []
    for i, kind in enumerate(kinds):
        _, default = FAULT_KINDS[kind]
        out.append(Fault(kind, round(gap * (i + 1), 3), round(min(default, 0.6 * gap), 3)))
    return out


def parse_schedule(text: str, seconds: float) -> list[Fault]:
    """``kill_tap@60:2,sink_503@120:10`` (``:duration`` optional: the kind's default); ``none``: no faults;
    ``default``: :func:`default_schedule`."""
    if text == "default":
        return default_schedule(seconds)
    if text in ("", "none"):
        return []
    out = []
    for part in text.split(","):
        kind, _, when = part.strip().partition("@")
        if kind not in FAULT_KINDS:
            raise ScheduleError(f"unknown fault {kind!r}; one of: {', '.join(FAULT_KINDS)}")
        at_text, _, dur_text = when.partition(":")
        try:
            at = float(at_text)
            duration = float(dur_text) if dur_text else FAULT_KINDS[kind][1]
        except ValueError:
            raise ScheduleError(f"bad fault {part!r}: expected kind@seconds[:duration]") from None
        if not 0 <= at < seconds or duration < 0:
            raise ScheduleError(f"fault {part!r}: must start within the run (0..{seconds:g} s)")
        out.append(Fault(kind, at, duration))
    return sorted(out, key=lambda f: f.at)
