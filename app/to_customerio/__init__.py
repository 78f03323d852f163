"""mParticle → Customer.io: the Webhook output's event batches in, Track API v2 items out.

mParticle's side: ``schema`` (the outgoing batch JSON the Webhook output POSTs, and
which of its events are usable). Customer.io's side: ``mapping`` (who the batch is
about, which events are forwarded, and the ``/api/v2/batch`` items for them) and
``ulid`` (the deterministic event ids that make a retried request create nothing
twice). The receiving view, batching, the client and the delivery live beside them.

May import: ``app.store``, ``app.relay``, and the app's config, services, errors and
metrics (the view and the delivery). ``schema``, ``mapping`` and ``ulid`` are pure:
marshmallow and the standard library only, no Flask, Redis, requests or I/O. No other
direction: the catalog's event names reach the echo guard through
``MappingOptions.known_event_names``.
"""
