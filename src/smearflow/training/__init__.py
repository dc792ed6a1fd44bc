"""Training, evaluation and benchmarking of cell classifiers."""
