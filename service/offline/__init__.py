"""Commands that work on files rather than a live plant: evaluate, train, their readers."""
