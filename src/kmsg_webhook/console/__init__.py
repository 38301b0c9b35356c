"""The operator console: deliveries and endpoints in a browser, rendered on the server.

``kmsg-webhook console --store URL`` serves it; :func:`create_console_app` mounts it into an
existing aiohttp application. Needs the ``console`` extra (Jinja2).
"""

from __future__ import annotations

from .app import create_console_app
from .security import TOKEN_ENV, check_bind

__all__ = ["TOKEN_ENV", "check_bind", "create_console_app"]
