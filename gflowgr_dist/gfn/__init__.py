"""GFlowNet objectives and heads for fine-tuning a generative recommender (GFlowGR, paper.md §2).

Kept free of Ray and of any model class so the learner, the experiments and the tests share one
definition of each loss: `losses` holds pure functions of tensors, `heads` the small modules that
parameterise log Z(U) and log F(s_l).
"""
