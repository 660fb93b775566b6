"""Editing a TFLite file with the flatbuffer object API, for tests that build variants of
the real models. Pure Python: LiteRT's interpreter (a native library) is not needed, so
the refusal tests run where it does not load. Under CI, a missing module fails
(conftest.require)."""
from conftest import require

flatbuffers = require("flatbuffers")
schema = require("ai_edge_litert.schema_py_generated")
OP = schema.BuiltinOperator


def unpack(buf: bytes):
    return schema.ModelT.InitFromPackedBuf(buf, 0)


def pack(model) -> bytes:
    b = flatbuffers.Builder(1 << 20)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def code_of(model, op) -> int:
    c = model.operatorCodes[op.opcodeIndex]
    return max(c.builtinCode, c.deprecatedBuiltinCode)


def engine_names(model, arch) -> dict:
    """{engine name: op} of every layer and activation of a MobileNetV2 file, by position:
    MobileNetV2 is a chain, so the conv/dense ops in graph order are the layers in Table 2's
    order (arch.tensor_shapes()), the ADDs the residual blocks in order."""
    ops = model.subgraphs[0].operators
    convs = [op for op in ops if code_of(model, op) in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D, OP.FULLY_CONNECTED)]
    adds = [op for op in ops if code_of(model, op) == OP.ADD]
    pools = [op for op in ops if code_of(model, op) in (OP.MEAN, OP.AVERAGE_POOL_2D)]
    softmax = [op for op in ops if code_of(model, op) == OP.SOFTMAX]
    layers = list(arch.tensor_shapes())
    residual = [f"{b.name}/residual" for b in arch.table2_blocks if b.use_residual]
    assert len(convs) == len(layers) and len(adds) == len(residual) and len(pools) == len(softmax) == 1
    return {**dict(zip(layers, convs)), **dict(zip(residual, adds)), "pool": pools[0], "softmax": softmax[0]}
