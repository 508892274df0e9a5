"""Operator tools: render, dlq, status, export, admin commands."""
