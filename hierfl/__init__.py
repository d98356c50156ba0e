"""hierfl."""
