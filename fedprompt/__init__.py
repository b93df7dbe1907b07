"""fedprompt: privacy-hardened federated soft-prompt tuning of frozen language models.

This package's own modules are the shared core (config, protocol, wire, models, data, privacy accounting);
the coordinator, participant, crypto and app layers live in the repository's top-level folders of those names
and are linked in as ``fedprompt.coordinator``, ``fedprompt.participant``, ``fedprompt.crypto`` and
``fedprompt.app``.  ``docs/architecture.md`` maps every module and the layers' import rules.
"""
