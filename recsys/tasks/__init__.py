"""Training tasks: what a batch is, what the loss is and how a model is validated, per problem
(next-item, CTR). The generic loop in recsys/train.py drives any of them."""
