"""Generated from protos/imgpipe/v1 by `make gen`. Do not edit the *_pb2* files."""
