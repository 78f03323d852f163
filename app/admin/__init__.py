"""Admin and support surfaces: the bearer-token JSON API and the web console."""
