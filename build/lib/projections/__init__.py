"""Read models folded from the event log, each in its own SQLite file."""
