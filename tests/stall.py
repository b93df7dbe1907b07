"""Run as ``python -m tests.stall``: a participant process that stalls in the middle of an upload stream,
for the test to SIGKILL it there.  Imports only what a participant needs, so it starts in well under a second."""

from __future__ import annotations

import argparse
import time

from fedprompt.app.synthetic import SyntheticParticipant
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.protocol import TaskKind
from fedprompt.v1 import participant_pb2
from fedprompt.wire import serde


def main(argv: list[str] | None = None) -> None:
    """Act as participant NAME: evaluate as asked, then send the header and the first CHUNKS chunks of its
    round update, print STALLED and wait (for SIGKILL) without ever finishing the stream."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--vector-size", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=1, help="chunks sent before stalling (of 8)")
    args = parser.parse_args(argv)
    link = GrpcLink(args.coordinator, args.name)
    participant = SyntheticParticipant(link, args.name, args.job, args.vector_size, args.seed)
    participant.join()
    while (task := link.get_task(args.job, 1.0)).kind is not TaskKind.TRAIN:
        if task.kind is TaskKind.EVALUATE:
            link.report(args.job, task.global_version, {"loss": 0.0}, 1)
    payload = participant.update(task.round)
    messages = list(serde.payload_messages(payload, participant_pb2.UploadUpdateRequest,
                                           chunk_bytes=-(-len(payload.data) // 8)))

    def stream():
        yield from messages[: 1 + args.chunks]
        time.sleep(0.5)  # let gRPC put the sent part on the wire
        print("STALLED", flush=True)
        time.sleep(3600)

    link.stub.UploadUpdate(stream(), metadata=link.metadata)


if __name__ == "__main__":
    main()
