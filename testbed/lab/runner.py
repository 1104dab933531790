"""Run (or, with dry_run, print) a plan of steps with progress lines on stderr."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import TextIO

from testbed.lab.layout import REPO
from testbed.lab.plan import Step

POLL_EVERY = 3.0


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"


def _once(step: Step) -> tuple[int, str, str]:
    assert step.argv is not None
    data = step.stdin() if step.stdin else None
    try:
        p = subprocess.run(step.argv, cwd=REPO, input=data, capture_output=True, text=True)
    except OSError as e:
        return 127, "", f"{step.argv[0]}: {e.strerror}"
    return p.returncode, p.stdout, p.stderr


def run_plan(steps: list[Step], *, dry_run: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """0 when every step succeeded (or was allowed to fail); else 1 after a one-line reason."""
    n = len(steps)
    failed_soft = 0
    for i, step in enumerate(steps, 1):
        head = f"[{i}/{n}] {step.title}"
        if dry_run:
            extra = []
            if step.poll:
                extra.append(f"repeat until ready, up to {step.poll:.0f}s")
            if step.skip_note:
                extra.append(f"skipped if {step.skip_note}")
            if step.may_fail:
                extra.append("a failure is reported, not fatal")
            print(head, file=out)
            print(f"    $ {step.command_text()}" + (f"    # {'; '.join(extra)}" if extra else ""), file=out)
            continue
        print(head, file=err, flush=True)
        missing = [p for p in step.requires if not p.exists()]
        if missing:
            print(f"testbed lab: step {i} ({step.title}): {missing[0]} does not exist", file=err)
            return 1
        if step.skip_if is not None and step.skip_if():
            print(f"    skipped: {step.skip_note}", file=err)
            continue
        if step.action is not None:
            try:
                step.action()
            except (RuntimeError, OSError) as e:   # StepError, kindload.LoadError, a missing program
                print(f"testbed lab: step {i} ({step.title}) failed: {e}", file=err)
                return 1
            continue
        deadline = time.monotonic() + step.poll
        while True:
            rc, stdout, stderr = _once(step)
            ready = rc == 0 and (step.until is None or step.until(stdout))
            if ready or not step.poll or time.monotonic() >= deadline:
                break
            time.sleep(POLL_EVERY)
        if step.may_fail:
            # status-type output is the point of these steps: show it as it came
            out.write(stdout)
            if rc != 0:
                failed_soft += 1
                print(f"    (failed: {_last_line(stderr or stdout)})", file=err)
            continue
        if not ready:
            why = f"not ready after {step.poll:.0f}s" if rc == 0 else f"exit {rc}: {_last_line(stderr or stdout)}"
            print(f"testbed lab: step {i} ({step.title}) failed: {why}", file=err)
            print(f"    command: {step.command_text()}", file=err)
            return 1
    if failed_soft:
        print(f"testbed lab: {failed_soft} of {n} checks failed (see above)", file=err)
    return 0
