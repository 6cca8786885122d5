"""The one home of the evaluation protocols, called by the tasks, `recsys evaluate`, the run
directory's eval.json, the report, the demo and the benchmarks:

- `ranking`: next-item HR/NDCG/MRR@k from 0-based ranks (pessimistic ties), full ranking and
  sampled-100 share it (the candidates differ; recsys/tasks/next_item.py builds them);
- `ctr`: AUC, GAUC, logloss;
- `bootstrap`: percentile confidence intervals by resampling users;
- `planted`: retrieval quality against the planted relevant positions of synthetic data;
- `protocol`: what each protocol is, the dataset's own name, evaluating a model on a task's
  splits, and printing every number with its protocol, split and dataset.
"""
