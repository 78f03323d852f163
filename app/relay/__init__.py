"""The direction-neutral worker: the loop, the delivery policy and its words.

A direction hands the worker its decoder, packer and client (``direction``); the
delivery policy turns answers into actions (``policy``: done, retry after, split,
dead-letter, stop); the client speaks in ``outcomes``; ``runner`` runs a worker as a
process.

May import: ``app.store``, ``app.metrics`` and redis. Never Flask, requests, or a
direction's package.
"""
