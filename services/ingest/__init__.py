"""IngestService: the front door and the owner of all state."""
