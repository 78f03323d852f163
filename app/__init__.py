"""cio-mparticle-relay: Customer.io reporting webhooks -> mParticle custom events.

``create_app`` is the composition root: the only module that wires every package
together (the console included). Packages below it: ``store`` (the only one that speaks
Redis), ``relay`` (the direction-neutral worker), one package per direction
(``to_mparticle``), ``support`` (replay, the CLI) and ``admin`` (API and console).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask, Response, g, request

from app.config import ConfigError, Settings, load_settings
from app.errors import register_error_handlers
from app.logs import configure_logging, request_id_from
from app.services import init_services, services

logger = logging.getLogger(__name__)

__all__ = ["ConfigError", "create_app"]


def create_app(
    settings: Settings | None = None, *, redis_client: Any = None, role: str = "web"
) -> Flask:
    """Build the relay app: config, logging, services, blueprints, error handlers, CLI.

    ``role`` says which checks apply: "web" needs signing keys (and, on the embedded
    default, mParticle credentials or dry-run, since the worker runs inside it); "cli"
    checks only what each command needs.
    """
    settings = settings or load_settings()
    configure_logging(settings.logging["level"], settings.logging["format"])
    if role == "web":
        _check_web_settings(settings)

    app = Flask(__name__)
    # The largest body of any route but a webhook, which sets its own.
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook["max_body_bytes"]
    _register_request_ids(app)
    relay = init_services(app, settings, redis_client)
    if role == "web":
        relay.require_redis_that_keeps_data()
    _register_blueprints(app)
    _register_error_handlers(app)
    _register_cli(app)
    if settings.embedded and role == "web":
        _start_embedded_worker_on_first_request(app)
    return app


def _check_web_settings(settings: Settings) -> None:
    settings.require_signing_keys()
    settings.require_customerio()
    if settings.embedded:
        settings.require_mparticle()
        logger.warning(
            "REDIS_URL is not set: using the embedded in-process store with the worker as a "
            "thread. Events live only in this process's memory; this is for trying the relay, "
            "not for production."
        )
    if not settings.webhook["require_signature"]:
        logger.warning(
            "SIGNATURE CHECKS ARE OFF ([webhook] require_signature = false): anyone who can "
            "reach this service can inject events into mParticle"
        )
    if settings.mparticle["dry_run"]:
        logger.warning("[mparticle] dry_run is on: batches are logged, nothing is sent")


def _register_request_ids(app: Flask) -> None:
    """Give every request an id for its log lines, echoed as X-Request-Id.

    A sane incoming X-Request-Id (from a router or proxy) is kept, so one id follows
    the request through every hop.
    """

    @app.before_request
    def assign_request_id() -> None:
        g.request_started = time.perf_counter()
        g.request_id = request_id_from(request.environ.get("HTTP_X_REQUEST_ID"))

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is not None:
            response.headers["X-Request-Id"] = request_id
        return response


def _register_blueprints(app: Flask) -> None:
    from app.admin.api import blueprint as admin_api
    from app.admin.console import init_console
    from app.api_doc import blueprint as api_doc
    from app.health import blueprint as health
    from app.to_customerio.webhook import blueprint as mparticle_webhook
    from app.to_mparticle.webhook import blueprint as customerio_webhook

    app.register_blueprint(customerio_webhook)
    if services(app).settings.to_customerio_enabled:  # else /webhooks/mparticle is a 404
        app.register_blueprint(mparticle_webhook)
    if services(app).settings.audiences_enabled:  # else the audiences' route is a 404
        from app.to_customerio.audience_webhook import blueprint as mparticle_audiences

        app.register_blueprint(mparticle_audiences)
    app.register_blueprint(health)
    app.register_blueprint(api_doc)  # GET /openapi.yaml
    app.register_blueprint(admin_api)
    init_console(app)  # the web console, its session and CSRF checks


def _register_error_handlers(app: Flask) -> None:
    from app.admin.console import CONSOLE_PATH, error_page

    # A console URL that matches no page is a person in a browser: the console's page.
    register_error_handlers(app, html_pages={CONSOLE_PATH: error_page})


def _register_cli(app: Flask) -> None:
    from app.support.cli import register_commands

    register_commands(app)


def _start_embedded_worker_on_first_request(app: Flask) -> None:
    """On the embedded default the worker is a thread of the web process.

    It starts with the first request, so it runs in the serving process (after
    gunicorn forks) and never in a CLI command that merely loads the app.
    """
    lock = threading.Lock()

    @app.before_request
    def start_worker_once() -> None:
        if "worker_thread" in services(app).extras:
            return
        with lock:
            if "worker_thread" in services(app).extras:
                return
            workers = services(app).build_workers()
            threads = [threading.Thread(target=worker.run, daemon=True,
                                        name=f"relay-{worker.direction.name}")
                       for worker in workers]
            services(app).extras["worker"] = workers[0]
            services(app).extras["workers"] = workers
            services(app).extras["worker_thread"] = threads[0]
            for thread in threads:
                thread.start()
            logger.info("embedded worker started in this process (%s)",
                        ", ".join(worker.direction.name for worker in workers))
