"""Calibration data (real images, one preprocessing) and int8 range estimators.

>>> from edgekit.calibration import calibration_batch, preprocessing_for, ranges_for_arrays, MSE
>>> pre = preprocessing_for({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5]})
>>> x = calibration_batch("fashion-mnist", pre, samples=16)      # (16, 1, 32, 32), train split
>>> lo, hi = ranges_for_arrays({"input": [x]}, MSE())["input"]
"""
from .data import (FASHION_MNIST_CLASSES, Dataset, SyntheticDataWarning, calibration_batch, fashion_mnist_dir,
                   load_dataset, preprocess, preprocessing_for, read_idx, resize, synthetic_batch)
from .ranges import (METHODS, MSE, Entropy, MinMax, Percentile, RangeEstimator, RangeObserver, fake_quantize,
                     method_from_name, quantization_mse, ranges_for_arrays, scale_zero_point)

__all__ = ["FASHION_MNIST_CLASSES", "Dataset", "SyntheticDataWarning", "calibration_batch", "fashion_mnist_dir",
           "load_dataset", "preprocess", "preprocessing_for", "read_idx", "resize", "synthetic_batch",
           "METHODS", "MSE", "Entropy", "MinMax", "Percentile", "RangeEstimator", "RangeObserver", "fake_quantize",
           "method_from_name", "quantization_mse", "ranges_for_arrays", "scale_zero_point"]
