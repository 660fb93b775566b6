"""mnv2engine: MobileNetV2 inference in NumPy and Numba, with the paper's streaming evaluation.

    from mnv2engine import Engine
    engine = Engine.load("mnv2.h5", t=4)
    engine.predict("cat.jpg")            # [(index, label, probability), ...]
"""
from .errors import EngineError, InputError, UnverifiedWeightsWarning, WeightFileError
from .arch import Architecture
from .engine import Engine
from .weights import convert

__all__ = ["Engine", "EngineError", "InputError", "WeightFileError", "UnverifiedWeightsWarning", "Architecture", "convert"]
__version__ = "0.1.0"
