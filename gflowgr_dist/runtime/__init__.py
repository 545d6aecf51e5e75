"""The Ray actor-learner runtime: rollout, reward, buffer, weight sync, learner, driver.

Only moves typed batches between roles and calls the algorithm code of `gfn/` and `train/`;
`gflowgr train --runtime ray` (or `runtime.enabled: true`) runs it. Ray is imported lazily.
"""
