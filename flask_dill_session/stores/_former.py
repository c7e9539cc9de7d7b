"""Sessions still under a former key: the key an earlier release gave them (the store key,
id included) or their name under a fallback secret. Each is moved once to its key."""

from __future__ import annotations

import re

from . import _clients as clients
from . import _scripts as scripts
from ._clients import Client
from ._keys import KeyNames


def _glob(text: str) -> str:
    """*text* as a literal in a ``SCAN MATCH`` pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class FormerKeys:
    """Moves blobs from former keys of *names* to their keys, with *client*. Client errors
    propagate: the store turns them into its error."""

    def __init__(self, client: Client, names: KeyNames) -> None:
        self.client = client
        self.names = names
        self.take_script = client.register_script(scripts.TAKE)

    def adopt(self, key: str, name: str) -> bool:
        """Move *key*'s blob to *name* from the first former key that holds one; whether
        one did. One round trip per former key tried, two more to move."""
        return any(self.move(former, name) for former in self.names.former(key))

    def move(self, former: str, name: str) -> bool:
        """Take the blob under *former* and put it under *name* (unless a blob is there
        already), keeping its TTL; whether there was one. Two commands: the keys' slots
        differ, so no script may touch both."""
        taken = clients.run_script(self.client, self.take_script, [former], [])
        if not taken:
            return False
        blob, ttl = taken[0], int(taken[1])
        self.client.set(name, blob, nx=True, px=max(1, ttl) if ttl >= 0 else None)
        return True

    def sweep(self) -> int:
        """Move every session an earlier release stored under its id, scanning every
        primary; how many moved."""
        moved = 0
        pattern = _glob(self.names.prefix) + "*"
        for node in clients.primaries(self.client):
            for raw in node.scan_iter(match=pattern, count=1000, _type="string"):
                name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                if self.names.is_former(name):
                    moved += self.move(name, self.names.session(name))
        return moved
