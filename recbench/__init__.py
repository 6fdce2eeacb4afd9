"""recbench: a benchmark harness for memory-efficient embedding layers in recommender models."""

__version__ = "0.1.0"
