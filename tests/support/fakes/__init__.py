"""Local fake vendor servers (aiohttp, 127.0.0.1, port 0) speaking each vendor's wire format."""
