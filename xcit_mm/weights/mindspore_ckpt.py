"""MindSpore ``.ckpt`` files, read with the ``protobuf`` library alone.

``mindspore.save_checkpoint`` writes one serialised ``Checkpoint`` message
per parameter, back to back (protobuf merges concatenated messages)::

    message Checkpoint { repeated Value value = 1; }
    message Value { required string tag = 1;
                    oneof value { TensorProto tensor = 2;
                                  MapTensorProto maptensor = 3; } }
    message TensorProto { repeated int64 dims = 1;
                          required string tensor_type = 2;
                          required bytes tensor_content = 3; }

``tensor_content`` holds the raw C-order little-endian values; a tensor
larger than 512 MB is split along its first axis into several values with
the same tag. With ``crc_check=True`` the file ends in ``b'crc_num'`` and the
CRC32 of the messages as 10 decimal digits. Map tensors (embedding tables,
not XCiT weights) are skipped; encrypted files are not supported.
"""
import zlib
from collections import OrderedDict
from functools import lru_cache
from typing import Dict

import torch

_DTYPES = {
    'Float16': torch.float16, 'Float32': torch.float32,
    'Float64': torch.float64, 'BFloat16': torch.bfloat16,
    'Int8': torch.int8, 'Int16': torch.int16, 'Int32': torch.int32,
    'Int64': torch.int64, 'UInt8': torch.uint8, 'Bool': torch.bool,
}
# message -> its fields (name, repeated, type), numbered from 1
_SCHEMA = dict(
    TensorProto=[('dims', True, 'int64'), ('tensor_type', False, 'string'),
                 ('tensor_content', False, 'bytes')],
    Value=[('tag', False, 'string'), ('tensor', False, 'TensorProto')],
    Checkpoint=[('value', True, 'Value')])


@lru_cache(maxsize=1)
def _checkpoint_class():
    """The ``Checkpoint`` message class, built from :data:`_SCHEMA`."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message_factory import GetMessageClass
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name='xcit_mm/mindspore_checkpoint.proto', package='ms',
        syntax='proto2')
    for name, fields in _SCHEMA.items():
        message = proto.message_type.add(name=name)
        for number, (field, repeated, kind) in enumerate(fields, 1):
            scalar = getattr(F, f'TYPE_{kind.upper()}', None)
            message.field.add(
                name=field, number=number, type=scalar or F.TYPE_MESSAGE,
                type_name=None if scalar else f'.ms.{kind}',
                label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return GetMessageClass(pool.FindMessageTypeByName('ms.Checkpoint'))


def read_mindspore_checkpoint(data: bytes) -> Dict[str, torch.Tensor]:
    """The named tensors of a MindSpore checkpoint (its raw bytes).

    Raises:
        ValueError: the bytes are not a MindSpore checkpoint, are truncated,
            fail their CRC, or hold a tensor whose size does not match its
            shape.
    """
    from google.protobuf.message import DecodeError
    if len(data) > 17 and data[-17:-10] == b'crc_num':
        data, crc = data[:-17], data[-10:]
        if not crc.isdigit() or int(crc) != zlib.crc32(data):
            raise ValueError('its CRC does not match (the file is corrupt)')
    try:
        values = _checkpoint_class().FromString(data).value
    except DecodeError as err:
        raise ValueError('not a MindSpore checkpoint, or truncated or '
                         f'encrypted (protobuf: {err})') from None
    if not values:
        raise ValueError('not a MindSpore checkpoint: it holds no tensors')
    parts = OrderedDict()
    for value in values:
        if value.HasField('tensor') and value.tensor.tensor_type != 'str':
            parts.setdefault(value.tag, []).append(value.tensor)
    out = OrderedDict()
    for tag, pieces in parts.items():
        dtype = _DTYPES.get(pieces[0].tensor_type)
        if dtype is None:
            raise ValueError(
                f'unsupported tensor type {pieces[0].tensor_type!r}')
        flat = torch.cat([torch.frombuffer(bytearray(p.tensor_content),
                                           dtype=dtype) for p in pieces])
        shape = list(pieces[0].dims)
        if flat.numel() != torch.Size(shape).numel():
            raise ValueError(f'tensor {tag!r} has {flat.numel()} values for '
                             f'shape {shape} (truncated?)')
        out[tag] = flat.reshape(shape)
    return out
