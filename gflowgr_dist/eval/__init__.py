"""Evaluation: full-ranking accuracy, diversity and paired significance tests.

Every recommender in the project (popularity, SASRec, the generative models) is judged by the
same per-user metrics, kept per user so two systems can be compared with a paired bootstrap.
"""
