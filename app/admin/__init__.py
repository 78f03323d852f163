"""Admin and support surfaces: the bearer-token API (and, later, the console)."""
