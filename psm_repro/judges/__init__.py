"""Persona judges (offline MiniLM + reference-LM, or an LLM endpoint) and their validation against blind labels."""
