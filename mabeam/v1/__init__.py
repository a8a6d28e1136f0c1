"""Generated code for the ``mabeam.v1`` protobuf package (``make proto`` rewrites the ``*_pb2*`` files)."""
