"""The science: one module per experiment kind. No Ray, no files, no MLflow in here."""
