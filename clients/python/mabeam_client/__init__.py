"""The mabeam Python SDK: async clients (with a thin sync face) for the mabeam gRPC services, and ``meshctl``."""
