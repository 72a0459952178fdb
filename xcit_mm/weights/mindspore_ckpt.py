"""MindSpore ``.ckpt`` files, read with the ``protobuf`` library alone.

``mindspore.save_checkpoint`` writes one serialised ``Checkpoint`` message
per parameter, back to back (protobuf merges concatenated messages, so the
whole file parses as one ``Checkpoint``)::

    message Checkpoint { repeated Value value = 1; }
    message Value { required string tag = 1;
                    oneof value { TensorProto tensor = 2;
                                  MapTensorProto maptensor = 3; } }
    message TensorProto { repeated int64 dims = 1;
                          required string tensor_type = 2;
                          required bytes tensor_content = 3; }
    message MapTensorProto { repeated TensorProto tensor = 1; }

``tensor_content`` holds the raw C-order little-endian values; a tensor
larger than 512 MB is split along its first axis into several values with
the same tag. With ``crc_check=True`` the file ends in ``b'crc_num'`` and the
CRC32 of the messages as 10 decimal digits. Encrypted files are not
supported.
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
_CRC_MARK = b'crc_num'


@lru_cache(maxsize=1)
def _checkpoint_class():
    """The ``Checkpoint`` message class, built from its descriptor."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf import message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name='xcit_mm/mindspore_checkpoint.proto',
        package='xcit_mm.mindspore', syntax='proto2')

    def message(name, fields):
        msg = proto.message_type.add(name=name)
        for number, (fname, label, ftype, type_name) in enumerate(fields, 1):
            field = msg.field.add(name=fname, number=number, label=label,
                                  type=ftype)
            if type_name:
                field.type_name = f'.xcit_mm.mindspore.{type_name}'
        return msg

    message('TensorProto', [
        ('dims', F.LABEL_REPEATED, F.TYPE_INT64, None),
        ('tensor_type', F.LABEL_REQUIRED, F.TYPE_STRING, None),
        ('tensor_content', F.LABEL_REQUIRED, F.TYPE_BYTES, None),
    ])
    message('MapTensorProto',
            [('tensor', F.LABEL_REPEATED, F.TYPE_MESSAGE, 'TensorProto')])
    value = message('Value', [
        ('tag', F.LABEL_REQUIRED, F.TYPE_STRING, None),
        ('tensor', F.LABEL_OPTIONAL, F.TYPE_MESSAGE, 'TensorProto'),
        ('maptensor', F.LABEL_OPTIONAL, F.TYPE_MESSAGE, 'MapTensorProto'),
    ])
    value.oneof_decl.add(name='value')
    value.field[1].oneof_index = 0
    value.field[2].oneof_index = 0
    message('Checkpoint',
            [('value', F.LABEL_REPEATED, F.TYPE_MESSAGE, 'Value')])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName('xcit_mm.mindspore.Checkpoint'))


def _tensor(proto) -> torch.Tensor:
    dtype = _DTYPES.get(proto.tensor_type)
    if dtype is None:
        raise ValueError(f'unsupported tensor type {proto.tensor_type!r}')
    shape = list(proto.dims)
    flat = torch.frombuffer(bytearray(proto.tensor_content), dtype=dtype)
    count = 1
    for d in shape:
        count *= d
    return flat, shape, count


def read_mindspore_checkpoint(data: bytes) -> Dict[str, torch.Tensor]:
    """The named tensors of a MindSpore checkpoint (its raw bytes).

    Raises:
        ValueError: the bytes are not a MindSpore checkpoint, are truncated,
            fail their CRC, or hold a tensor whose size does not match its
            shape.
    """
    from google.protobuf.message import DecodeError
    if len(data) > 17 and data[-17:-10] == _CRC_MARK:
        body, crc = data[:-17], data[-10:]
        if not crc.isdigit() or int(crc) != zlib.crc32(body):
            raise ValueError('its CRC does not match (the file is corrupt)')
        data = body
    try:
        ckpt = _checkpoint_class().FromString(data)
    except DecodeError as err:
        raise ValueError(
            'not a MindSpore checkpoint, or truncated or encrypted '
            f'(protobuf: {err})') from None
    if not ckpt.value:
        raise ValueError('not a MindSpore checkpoint: it holds no tensors')
    parts: 'OrderedDict[str, list]' = OrderedDict()
    for value in ckpt.value:
        if value.WhichOneof('value') != 'tensor':
            continue  # map tensors (embedding tables) are not XCiT weights
        if value.tensor.tensor_type == 'str':
            continue
        parts.setdefault(value.tag, []).append(_tensor(value.tensor))
    out = OrderedDict()
    for tag, pieces in parts.items():
        shape, count = pieces[0][1], pieces[0][2]
        flat = torch.cat([p[0] for p in pieces])
        if flat.numel() != count:
            raise ValueError(
                f'tensor {tag!r} has {flat.numel()} values for shape '
                f'{shape} (truncated?)')
        out[tag] = flat.reshape(shape)
    return out
