"""The app layer: the ``fedprompt`` CLI, the demo, in-process simulation, benchmarks, reports, the admin
client, the attack simulator and synthetic participants.  It drives the coordinator and participant
packages; nothing below it imports it (``.importlinter``)."""
