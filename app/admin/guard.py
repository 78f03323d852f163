"""What the admin API and the console share: who is asking, the throttle on wrong tokens,
and the headers of every ``/admin`` answer.

Wrong tokens are counted per client address in Redis (:mod:`app.store.admin_guard`), so
every web process sees one count, and the API and the console draw on one allowance.
While a client is locked out even the right token is refused: were it accepted, the
answer to each guess (429 or 200) would still tell a guesser when it was right, and the
lockout would slow nothing down.
"""

from __future__ import annotations

import hmac
import logging

from flask import current_app, request
from werkzeug.wrappers import Response

from app.services import services
from app.store.admin_guard import Failures

logger = logging.getLogger(__name__)

ADMIN_PREFIX = "/admin"


def client_address() -> str:
    """The client's address as this process sees it: ``request.remote_addr``.

    Behind a proxy that is the proxy's own address, which every client would share (one
    lockout for all), unless the app is wrapped in werkzeug's ProxyFix; see "Admin access"
    in docs/operations.md.
    """
    return request.remote_addr or "unknown"


def token_matches(given: str, token: str) -> bool:
    """Whether ``given`` is the admin token, compared in constant time (timing tells nothing)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


def lockout_of_this_client() -> Failures | None:
    """This client's failures while it is locked out, else None."""
    failures = services(current_app).sign_in_failures.of(client_address())
    return failures if failures.locked_out else None


def note_wrong_token(where: str) -> Failures:
    """Count a wrong token against this client and log it, never with the value tried."""
    client = client_address()
    failures = services(current_app).sign_in_failures.note(client)
    extra = {"remote_addr": client, "failures": failures.count,
             "failure_limit": failures.limit, "locked_out": failures.locked_out}
    if failures.locked_out:
        logger.warning("%s refused: wrong token; this address is locked out for %d s",
                       where, failures.seconds_left, extra=extra)
    else:
        logger.warning("%s refused: wrong token (%d of %d allowed)", where, failures.count,
                       failures.limit, extra=extra)
    return failures


def keep_admin_answers_private(response: Response) -> Response:
    """Every ``/admin`` answer, errors and redirects included, is neither stored nor sniffed.

    Registered for the whole app (a URL under /admin that matches no route has no
    blueprint, yet its 404 is an admin answer too).
    """
    path = request.path
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
    return response
