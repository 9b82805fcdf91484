"""Reusable widgets with no knowledge of generation."""
