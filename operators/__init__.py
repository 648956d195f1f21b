"""Operators: thin wrappers that edit scene data or start the engine. No engine code runs here."""
