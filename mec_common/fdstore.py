"""Keep a service's sockets open across its crash: systemd's file descriptor store, both sides.

A capture socket dies with the process that holds it, and with it every packet that
arrives before a restarted process opens a new one. systemd solves this for any service
(``FileDescriptorStoreMax=``): the service hands its sockets to the supervisor with
``sd_notify("FDSTORE=1\\nFDNAME=…")`` and an SCM_RIGHTS message on ``$NOTIFY_SOCKET``;
when it is started again the supervisor passes them back as fds 3, 4, … with
``LISTEN_FDS``, ``LISTEN_PID`` and ``LISTEN_FDNAMES`` (sd_listen_fds(3), sd_notify(3)).
Meanwhile the kernel keeps the sockets, and an AF_PACKET ring keeps filling.

- Service side: :func:`listen_fds` (what was passed back) and :func:`store` (hand one over).
  Works under real systemd as under :class:`FdStore`.
- Supervisor side: :class:`FdStore` (the notify socket and the stored fds) and
  ``python -m mec_common.fdstore exec NAME=FD… -- PROGRAM ARGS…``, which moves the fds to
  3, 4, … and sets the three variables in the process that then becomes PROGRAM (so
  ``LISTEN_PID`` is PROGRAM's pid, as systemd sets it between fork and exec).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import socket
import sys
import threading
from pathlib import Path

SD_LISTEN_FDS_START = 3
MAX_NOTIFY = 4096
MAX_FDS_PER_MESSAGE = 16


class FdStoreError(ValueError):
    pass


# ---------------------------------------------------------------------- the service's side
def listen_fds(unset: bool = True) -> dict[str, int]:
    """The file descriptors passed to this process, by name (sd_listen_fds_with_names).

    Empty when none were passed, or when ``LISTEN_PID`` names another process (the
    variables were inherited from a parent they were meant for). ``unset`` removes the
    variables so that this process's own children do not take them as theirs.
    """
    env = os.environ
    try:
        count = int(env.get("LISTEN_FDS", "0"))
        pid = env.get("LISTEN_PID")
        if pid is not None and int(pid) != os.getpid():
            return {}
    except ValueError:
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    if unset:
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(key, None)
    out: dict[str, int] = {}
    for i in range(max(count, 0)):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) else "unknown"
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
            out[name] = fd
    return out


def _notify_address(value: str) -> str | bytes:
    if value.startswith("@"):  # abstract namespace
        return b"\0" + value[1:].encode()
    return value


def supervised() -> bool:
    """True when a supervisor may keep this process's fds ($NOTIFY_SOCKET is set)."""
    return bool(os.environ.get("NOTIFY_SOCKET"))


def store(fd: int, name: str) -> bool:
    """Hand ``fd`` to the supervisor's store under ``name``; False when there is no supervisor
    (``$NOTIFY_SOCKET`` unset) or it refused."""
    where = os.environ.get("NOTIFY_SOCKET")
    if not where:
        return False
    check_name(name)
    msg = f"FDSTORE=1\nFDNAME={name}\n".encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0,
                       _notify_address(where))
    except OSError:
        return False
    return True


def check_name(name: str) -> None:
    """systemd's rule for FDNAME: 1-255 printable ASCII characters, no ':'."""
    if not 0 < len(name) <= 255 or ":" in name or not all(33 <= ord(c) < 127 for c in name):
        raise FdStoreError(f"bad file descriptor name {name!r}")


# ---------------------------------------------------------------------- the supervisor's side
class FdStore:
    """A notify socket that keeps the file descriptors a service stores, by name (the latest wins).

    Lifecycle: ``start()`` (binds ``path``, receives in a thread), ``env()`` for the service,
    ``exec_argv(argv)`` to start it again with its fds, ``close()``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FdStore:
        self.path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._thread = threading.Thread(target=self._receive, name="fdstore", daemon=True)
        self._thread.start()
        return self

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    def _receive(self) -> None:
        assert self._sock is not None
        fd_bytes = MAX_FDS_PER_MESSAGE * array.array("i").itemsize
        while True:
            try:
                msg, anc, _flags, _addr = self._sock.recvmsg(MAX_NOTIFY, socket.CMSG_SPACE(fd_bytes))
            except OSError:
                return  # closed
            fds: list[int] = []
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(data[: len(data) - len(data) % a.itemsize])
                    fds += list(a)
            fields = dict(line.split("=", 1) for line in msg.decode(errors="replace").splitlines() if "=" in line)
            if fields.get("FDSTORE") != "1" or not fds:
                for fd in fds:
                    os.close(fd)
                continue
            name = fields.get("FDNAME", "stored")
            with self._lock:
                for i, fd in enumerate(fds):
                    key = name if len(fds) == 1 else f"{name}.{i}"
                    old = self.fds.pop(key, None)
                    if old is not None:
                        os.close(old)
                    self.fds[key] = fd

    def stored(self) -> dict[str, int]:
        with self._lock:
            return dict(self.fds)

    def exec_argv(self, argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
        """The command line that starts ``argv`` with the stored fds passed back, and the fds to
        keep open for it (``subprocess.Popen(..., pass_fds=…)``)."""
        fds = self.stored()
        if not fds:
            return argv, ()
        spec = [f"{name}={fd}" for name, fd in fds.items()]
        return [sys.executable, "-m", "mec_common.fdstore", "exec", *spec, "--", *argv], tuple(fds.values())

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with self._lock:
            for fd in self.fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.fds.clear()
        self.path.unlink(missing_ok=True)


def exec_with_fds(specs: list[str], argv: list[str]) -> None:
    """Move each NAME=FD to 3, 4, … (in order), set LISTEN_*, and become ``argv``."""
    if not argv:
        raise FdStoreError("no program to run")
    pairs: list[tuple[str, int]] = []
    for spec in specs:
        name, _, number = spec.partition("=")
        check_name(name)
        try:
            pairs.append((name, int(number)))
        except ValueError:
            raise FdStoreError(f"bad NAME=FD {spec!r}") from None
    count = len(pairs)
    if any(fd < SD_LISTEN_FDS_START for _name, fd in pairs):
        raise FdStoreError("stdin, stdout and stderr cannot be passed")
    # first out of the way, above every source and target (a source may sit on a target), then into place
    floor = max([fd for _name, fd in pairs] + [SD_LISTEN_FDS_START + count]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, floor) for _name, fd in pairs]
    for i, fd in enumerate(moved):
        os.dup2(fd, SD_LISTEN_FDS_START + i, inheritable=True)
    for fd in {fd for _name, fd in pairs} | set(moved):
        if fd >= SD_LISTEN_FDS_START + count:
            os.close(fd)
    os.environ.update({"LISTEN_FDS": str(len(pairs)), "LISTEN_PID": str(os.getpid()),
                       "LISTEN_FDNAMES": ":".join(name for name, _fd in pairs)})
    os.execvp(argv[0], argv)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[0] != "exec" or "--" not in args:
        print("usage: python -m mec_common.fdstore exec NAME=FD... -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    sep = args.index("--")
    try:
        exec_with_fds(args[1:sep], args[sep + 1 :])
    except (FdStoreError, OSError) as e:
        print(f"fdstore exec: {e}", file=sys.stderr)
        return 1
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
