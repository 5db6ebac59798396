"""gRPC transport: the servicer (auth, access log), proto <-> domain conversion, statuses."""
