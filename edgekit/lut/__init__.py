"""Latency lookup tables: search spaces, the LUT format, its build plan and the predictor.

>>> from edgekit.lut import get_space, plan
>>> space = get_space("fbnet-v1", resolution=32, width=0.25, in_chans=1, num_classes=10)
>>> len(space.layers)
22
"""
from .check import accuracy, check_lut, kendall, plot_check, sample_checks, spearman
from .device import DeviceTimer, build_on_device
from .fanout import build_on_devices
from .build import NetworkUnit, OrtTimer, TorchTimer, build_lut, local_fingerprint, measure_networks, plan
from .lut import Lut, LutError, LutMismatchError, load_lut, save_lut
from .predict import OverheadModel, Prediction, fit_overhead, mape, predict, with_overhead
from .space import CANDIDATES, BlockSig, FBNetV1Space, get_space, network_signatures

__all__ = ["CANDIDATES", "BlockSig", "DeviceTimer", "accuracy", "build_on_device", "build_on_devices", "check_lut",
           "kendall",
           "plot_check", "sample_checks", "spearman", "FBNetV1Space", "Lut", "LutError", "LutMismatchError",
           "NetworkUnit",
           "OrtTimer", "OverheadModel", "Prediction", "TorchTimer", "build_lut", "fit_overhead", "get_space",
           "load_lut", "local_fingerprint", "mape", "measure_networks", "network_signatures", "plan", "predict",
           "save_lut", "with_overhead"]
