"""aemon: streaming anomaly monitor for industrial equipment."""

__version__ = "0.1.0"
