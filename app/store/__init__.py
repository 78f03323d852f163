"""The only package that speaks Redis: every key, every script, every read and write.

Keys (``keys``), Lua scripts (``scripts/*.lua`` and their loader), an event's mark and
story (``marks``, ``stories``), accepting events in one round trip (``events``), queue
entries and the stream consumer (``queue_entry``, ``consumer``), the worker's
bookkeeping (``ledger``), the shared throttle, dead letters, toggles, relay state and
upgrades.

May import: redis and the standard library. Never Flask, requests, or any other
package of the relay: what a body means is its direction's to say, passed in.
"""
