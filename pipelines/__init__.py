"""Ray jobs: the data build (Ray Data), training (Ray Train) and the evaluation report."""
