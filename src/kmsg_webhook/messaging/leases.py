"""The names leases are held under."""

from __future__ import annotations

import os
import socket
import uuid


def new_worker_id() -> str:
    """A lease owner name unique to this process (host, pid and a random part)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
