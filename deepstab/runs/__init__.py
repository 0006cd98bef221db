"""One module per command: the run settings, the run from data to saved results, its summary."""
