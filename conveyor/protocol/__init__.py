"""Protocol v1: length-prefixed MessagePack frames. Sans-IO: nothing here touches a socket."""

from conveyor.protocol.codec import NEED_DATA, FrameDecoder, encode_frame
from conveyor.protocol.frames import PROTOCOL_VERSION, ErrorCode, FrameType

__all__ = [
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "FrameDecoder",
    "FrameType",
    "encode_frame",
]
