"""The Sparkplug B payload, as protobuf messages built at import from their field numbers.

Written from the Eclipse Sparkplug 3.0 specification's payload definition (its Payload and
Metric messages): only the fields aemon reads are declared. Everything else a payload may
carry (metadata, property sets, datasets, templates, extensions) parses as unknown fields
and is ignored; such a metric has no scalar value and is counted as ignored by
`service.stream.sparkplug`. No code generation step: the descriptor is made here.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, label) of the fields read; Metric's value fields form a oneof.
_PAYLOAD = (
    ("timestamp", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL),
    ("metrics", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED),
    ("seq", 3, _F.TYPE_UINT64, _F.LABEL_OPTIONAL),
)
_METRIC = (
    ("name", 1, _F.TYPE_STRING),
    ("alias", 2, _F.TYPE_UINT64),
    ("timestamp", 3, _F.TYPE_UINT64),
    ("datatype", 4, _F.TYPE_UINT32),
    ("is_historical", 5, _F.TYPE_BOOL),
    ("is_transient", 6, _F.TYPE_BOOL),
    ("is_null", 7, _F.TYPE_BOOL),
)
_VALUES = (
    ("int_value", 10, _F.TYPE_UINT32),
    ("long_value", 11, _F.TYPE_UINT64),
    ("float_value", 12, _F.TYPE_FLOAT),
    ("double_value", 13, _F.TYPE_DOUBLE),
    ("boolean_value", 14, _F.TYPE_BOOL),
    ("string_value", 15, _F.TYPE_STRING),
    ("bytes_value", 16, _F.TYPE_BYTES),
)
PACKAGE = "org.eclipse.tahu.protobuf"


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="aemon_sparkplug_b.proto", package=PACKAGE, syntax="proto2"
    )
    payload = proto.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    for name, number, kind, label in _PAYLOAD:
        field = payload.field.add(name=name, number=number, type=kind, label=label)
        if kind == _F.TYPE_MESSAGE:
            field.type_name = f".{PACKAGE}.Payload.Metric"
    for name, number, kind in _METRIC:
        metric.field.add(name=name, number=number, type=kind, label=_F.LABEL_OPTIONAL)
    metric.oneof_decl.add(name="value")
    for name, number, kind in _VALUES:
        metric.field.add(
            name=name, number=number, type=kind, label=_F.LABEL_OPTIONAL, oneof_index=0
        )
    return proto


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
# A protobuf message class; typed Any, as protobuf's dynamic classes have no stubs.
Payload: Any = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.Payload"))

# Sparkplug's data types (the Metric's `datatype`) that aemon takes as a number.
SIGNED_32 = {1, 2, 3}  # Int8, Int16, Int32: in int_value as 32-bit two's complement
UNSIGNED_32 = {5, 6, 7}  # UInt8, UInt16, UInt32 in int_value
INT64, UINT64, FLOAT, DOUBLE, BOOLEAN = 4, 8, 9, 10, 11
