"""Text utilities shared by tasks (offline sentence splitting)."""
