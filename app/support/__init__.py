"""For support staff and admins: dead-letter replay and the CLI (``cio-relay``).

Thin over the same services as the admin API and the console. May import every
package below it (store, relay, directions) and the app's services.
"""
