"""Serving a chain: REST and gRPC on one batcher that merges many clients' texts into shared forward passes."""
