"""imgpipe: the client side — generated gRPC stubs (imgpipe.v1) and the `imgpipe` CLI."""
