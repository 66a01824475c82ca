"""The run's machinery: flags, settings, data, checkpoints, the run folder, signals, the log."""
