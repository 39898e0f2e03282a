"""Generated protobuf and gRPC stubs for proto/tdn/v1 (make proto regenerates them)."""
