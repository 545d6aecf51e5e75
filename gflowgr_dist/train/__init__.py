"""Training loops, one module per model, each returning the trained model and its metrics."""
