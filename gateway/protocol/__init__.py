"""The MLflow scoring protocol: request bodies to model input, predictions to response bodies."""
