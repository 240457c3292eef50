"""study: experiment-tracked hyperparameter studies for neural networks."""

__version__ = "0.1.0"
