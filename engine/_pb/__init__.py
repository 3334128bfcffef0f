"""Generated gRPC stubs of proto/rtseg/v1/engine.proto (scripts/gen_proto.sh regenerates them).

``from engine._pb import pb, pb_grpc`` gives the message and service modules.
"""

from engine._pb.rtseg.v1 import engine_pb2 as pb
from engine._pb.rtseg.v1 import engine_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
