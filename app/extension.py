"""Where an app keeps its services: the one accessor views and handlers use.

Apart from ``app.services`` (which builds them, and so imports every direction), so
that a direction's view can reach the app's services without importing the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

if TYPE_CHECKING:
    from app.services import Services

EXTENSION = "relay"


def services(app: Flask) -> Services:
    """The services ``create_app`` built for this app."""
    return app.extensions[EXTENSION]
