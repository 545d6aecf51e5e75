"""Experiment matrices: many (model, seed) runs on one dataset, aggregated into a table."""
