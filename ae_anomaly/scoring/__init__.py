"""Batch scoring: streaming step scores, events, records for the sinks."""
