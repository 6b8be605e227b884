"""`emoforge bench NAME`: one module per benchmark, each with `run(...) -> dict` (JSON-ready)."""
