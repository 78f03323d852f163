"""The relay's webhook route with a PING for its script, for bench/run.py only.

The relay exactly as the Procfile's ``web`` serves it (``wsgi.app``), but its one Redis
call, the accept script, is swapped for a PING on the same connection: signature,
JSON, envelope, routing, deflate, keys, log line and metrics all run. Against (d), the
bare endpoint plus a PING, this shows what the relay's own work costs under load;
against the relay, what its script costs.
"""

import hiredis

from app.script_line import ScriptLine
from app.services import services
from wsgi import app

_store = services(app).event_store
_line = _store._accept_call
if not isinstance(_line, ScriptLine):
    raise SystemExit("bench.relay_ping_app needs REDIS_URL to be redis:// or unix://")
_PING = hiredis.pack_command(("PING",))


def _ping_instead_of_the_script(keys: list[str], args: list[object]) -> list[str]:
    if _line._call(_PING) != "PONG":
        raise RuntimeError("Redis did not answer PONG")
    return ["queued", "0-1"]


_store._accept_call = _ping_instead_of_the_script
