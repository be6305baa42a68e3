"""The study: quantities, findings, plots and the report of finished runs; augmentation affinity."""
