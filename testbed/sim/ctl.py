"""Local control channel of the sim daemons: one JSON request line, one JSON answer line, over a Unix socket.

Unix sockets are file-system objects, so the lab (in the root namespace) reaches the
gNB, SMF and UPF in their own namespaces through the lab's state directory.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 1 << 20


class CtlError(RuntimeError):
    """The daemon is unreachable or answered with an error."""


async def serve(path: Path, handler: Handler) -> asyncio.AbstractServer:
    """Serve requests on `path`; handler exceptions become {"error": ...} answers."""
    path.unlink(missing_ok=True)

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("request is not a JSON object")
                answer = await handler(req)
            except Exception as e:   # a bad request must not kill the daemon
                answer = {"error": f"{type(e).__name__}: {e}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_unix_server(on_conn, path=str(path), limit=MAX_REQUEST)


def call(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request, return the answer; raises CtlError on failure or an error answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as e:
        raise CtlError(f"{path.name}: {e.strerror or e}") from e
    try:
        answer = json.loads(buf)
    except ValueError as e:
        raise CtlError(f"{path.name}: unreadable answer {buf[:80]!r}") from e
    if "error" in answer:
        raise CtlError(f"{path.name}: {request.get('op')}: {answer['error']}")
    return answer
