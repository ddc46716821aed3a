"""Event model and event-log port/adapters of chive-backfill."""
