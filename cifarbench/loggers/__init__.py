"""Where a run's numbers go: the run log (log file, progress bars, TensorBoard scalars, metrics.json) and the
TensorBoard extras (hparams, images, confusion matrix)."""
