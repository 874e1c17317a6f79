"""The hot path: ingest -> window -> score -> alert -> publish, on the pipeline thread."""
