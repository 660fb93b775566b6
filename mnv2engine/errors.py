"""The one exception family users catch."""


class EngineError(Exception):
    """Every user-facing failure of mnv2engine: bad input, bad file, bad setting.

    The message names the problem and, where it helps, what was expected.
    """


class WeightFileError(EngineError):
    """A weight file that cannot be read, is not ours, or does not match its architecture."""


class InputError(EngineError, ValueError):
    """An input tensor or image the engine cannot take."""


class UnverifiedWeightsWarning(UserWarning):
    """A weight file loaded without an integrity check: written before mnv2.h5 had a digest."""
