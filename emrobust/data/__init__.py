"""Embedded datasets and dataset helpers for emrobust."""
