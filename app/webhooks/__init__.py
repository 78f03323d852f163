"""Receiving Customer.io reporting webhooks: signature, schema, the view."""
