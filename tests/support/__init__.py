"""Shared test helpers that are not tests themselves (hypothesis strategies, ...)."""
