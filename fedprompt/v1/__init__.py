"""Generated gRPC stubs for the fedprompt.v1 wire protocol (see proto/); regenerate with `make proto`."""
