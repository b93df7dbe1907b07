"""The coordinator: round state machine, aggregation, store and thin gRPC servicers."""
