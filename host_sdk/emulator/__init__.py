"""Emulated rigs: the physical world for boards that do not exist."""
