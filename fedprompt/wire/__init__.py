"""What travels between processes: payload encodings and chunking, level containers, the protobuf <-> domain
conversions, the one error <-> gRPC status table, and channel credentials."""
