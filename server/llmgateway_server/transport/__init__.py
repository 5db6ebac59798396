"""gRPC transport: servicer, proto <-> domain conversion, status mapping, interceptors."""
