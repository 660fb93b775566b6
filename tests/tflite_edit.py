"""Editing a TFLite file with the flatbuffer object API, for tests that build variants of
the real models. Pure Python: LiteRT's interpreter (a native library) is not needed, so
the refusal tests run where it does not load. Under CI, a missing module fails
(conftest.require)."""
from conftest import require

flatbuffers = require("flatbuffers")
schema = require("ai_edge_litert.schema_py_generated")


def unpack(buf: bytes):
    return schema.ModelT.InitFromPackedBuf(buf, 0)


def pack(model) -> bytes:
    b = flatbuffers.Builder(1 << 20)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def code_of(model, op) -> int:
    c = model.operatorCodes[op.opcodeIndex]
    return max(c.builtinCode, c.deprecatedBuiltinCode)
