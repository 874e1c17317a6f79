"""What every part of aemon shares: the data types, settings, metrics, logs and threads."""
