"""Models and what turns windows into scores: detectors, stacked model calls, thresholds."""
