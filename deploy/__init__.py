"""Using a trained model: predictions, thresholds, export, and the report pages of runs and predictions."""
