"""The weight file format (mnv2.h5) and converters from other frameworks.

Installed as `mnv2engine.weights`. Data flows one way: a source file is read into a
`WeightSet` (canonical tensor layouts, BatchNorm still separate), validated against the
architecture it claims, and written as mnv2.h5. The engine folds BatchNorm at load.
"""
from .weightset import BatchNorm, Layer, WeightSet, validate
from .h5format import read_mnv2, write_mnv2, SCHEMA_VERSION
from .convert import convert, read_any, detect_format

__all__ = ["BatchNorm", "Layer", "WeightSet", "validate", "read_mnv2", "write_mnv2",
           "SCHEMA_VERSION", "convert", "read_any", "detect_format"]
