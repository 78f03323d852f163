"""Customer.io → mParticle: reporting webhooks in, custom events out.

Customer.io's side: the webhook view (``webhook``, a Flask Blueprint), its signature
check, schema and the catalog of event types. mParticle's side: the mapping and
batching (pure), the client and its dry-run stand-in, and ``delivery``, which plugs
this direction into the relay's worker.

May import: ``app.store``, ``app.relay``, and the app's config, services, errors and
metrics (the view). ``catalog``, ``mapping``, ``batching``, ``schema`` and
``signature`` import neither Flask, Redis nor requests. No other direction.
"""
