"""gflowgr_dist: GFlowNet fine-tuning of generative recommenders on a Ray actor-learner runtime."""

__version__ = "0.1.0"
