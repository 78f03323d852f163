"""The WSGI entry point: ``gunicorn wsgi:app`` and ``flask --app wsgi <command>``."""

import sys

from app import ConfigError, create_app

try:
    app = create_app()
except ConfigError as exc:
    # One clear line instead of a traceback; gunicorn then stops (worker failed to boot).
    sys.stderr.write(f"configuration error: {exc}\n")
    sys.exit(1)
