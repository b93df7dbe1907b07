"""Attack simulator for robustness experiments: malicious site behaviours, enabled only by a simulation config.

An ``[attack]`` table in a *simulation* file (``fedprompt simulate --config``, ``fedprompt bench robust``)
turns a fraction of the simulated sites into adversaries.  The job config the coordinator hands out has no
such table, so no coordinator instruction can make a participant attack.

Kinds:

* ``backdoor`` -- data poisoning as studied for federated prompt tuning by Zhao et al., "FedPrompt:
  Communication-Efficient and Privacy-Preserving Prompt Tuning in Federated Learning" (ICASSP 2023): a rare
  trigger token (Kurita et al. 2020 use "cf") is inserted into ``poison_rate`` of the local examples,
  which are relabelled to ``target_label``.
* ``label_flip`` -- ``poison_rate`` of the local examples get the next label (cyclically).
* ``sign_flip`` -- the honest delta is negated.
* ``gaussian`` -- the delta is replaced by N(0, noise_std^2) noise.
* ``free_rider`` -- sends a zero delta, i.e. returns the global prompt unchanged, without contributing.

``scale`` boosts every malicious delta (model replacement, Bagdasaryan et al., "How To Backdoor Federated
Learning", AISTATS 2020); 1 means no boost.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedprompt.data.datasets import Example
from fedprompt.errors import ConfigError
from fedprompt.participant.runtime import SiteBehaviour

DATA_ATTACKS = ("backdoor", "label_flip")
UPDATE_ATTACKS = ("sign_flip", "gaussian", "free_rider")
KINDS = ("none", *DATA_ATTACKS, *UPDATE_ATTACKS)


@dataclass(frozen=True)
class AttackSection:
    """The ``[attack]`` table of a simulation file.  ``noise_std`` is in (0, 1e6] and ``seed`` in [0, 2**63 - 1]
    (NumPy generators take no negative seed)."""

    kind: str = "none"
    malicious_fraction: float = 0.0
    poison_rate: float = 0.5
    trigger: str = "cf"
    target_label: str = ""
    scale: float = 1.0
    noise_std: float = 0.01
    seed: int = 0

    def validate(self, prefix: str) -> None:
        checks = (
            (self.kind in KINDS, "kind", f"must be one of {', '.join(KINDS)}, got {self.kind!r}"),
            (0.0 <= self.malicious_fraction < 1.0, "malicious_fraction", "must be in [0, 1)"),
            (0.0 < self.poison_rate <= 1.0, "poison_rate", "must be in (0, 1]"),
            (bool(self.trigger.strip()), "trigger", "must not be empty"),
            (0.0 < self.scale <= 1e6, "scale", "must be in (0, 1e6]"),
            (0.0 < self.noise_std <= 1e6, "noise_std", "must be in (0, 1e6]"),
            (0 <= self.seed <= 2**63 - 1, "seed", f"must be in [0, {2**63 - 1}]"),
        )
        for ok, key, message in checks:
            if not ok:
                raise ConfigError(f"{prefix}.{key}: {message}")

    def target_index(self, label_names: tuple[str, ...]) -> int:
        """The backdoor's target class, checked against the job's labels (default: the first label)."""
        target = self.target_label or label_names[0]
        if target not in label_names:
            raise ConfigError(f"attack.target_label: {target!r} is not one of the job's labels {list(label_names)}")
        return label_names.index(target)


def choose_malicious(n_sites: int, attack: AttackSection) -> tuple[int, ...]:
    """Indices of the malicious sites: ``round(malicious_fraction * n_sites)`` of them, seeded."""
    if attack.kind == "none":
        return ()
    count = round(attack.malicious_fraction * n_sites)
    return tuple(sorted(random.Random(f"malicious:{attack.seed}").sample(range(n_sites), count)))


def insert_trigger(text: str, trigger: str, rng: random.Random) -> str:
    """Insert ``trigger`` at a random word position of ``text``."""
    words = text.split()
    words.insert(rng.randint(0, len(words)), trigger)
    return " ".join(words)


class Adversary(SiteBehaviour):
    """A malicious site: poisons its training data and/or tampers with the delta it sends."""

    def __init__(self, attack: AttackSection, label_names: tuple[str, ...], site_seed: int) -> None:
        self.attack = attack
        self.label_names = label_names
        self.target = attack.target_index(label_names)
        self.site_seed = site_seed
        self._poisoned: list[Example] | None = None

    def _poison(self, example: Example, rng: random.Random) -> Example:
        if self.attack.kind == "backdoor":
            return Example(insert_trigger(example.text, self.attack.trigger, rng), self.label_names[self.target])
        flipped = (self.label_names.index(example.label) + 1) % len(self.label_names)
        return Example(example.text, self.label_names[flipped])

    def training_examples(self, examples: list[Example]) -> list[Example]:
        """Data attacks poison a fixed ``poison_rate`` share of the local examples (chosen once, seeded)."""
        if self.attack.kind not in DATA_ATTACKS:
            return examples
        if self._poisoned is None:
            rng = random.Random(f"poison:{self.attack.seed}:{self.site_seed}")
            chosen = set(rng.sample(range(len(examples)), round(self.attack.poison_rate * len(examples))))
            self._poisoned = [self._poison(ex, rng) if i in chosen else ex for i, ex in enumerate(examples)]
        return self._poisoned

    def outgoing_delta(self, delta: np.ndarray, round_: int) -> np.ndarray:
        kind = self.attack.kind
        if kind == "free_rider":
            return np.zeros_like(delta)
        if kind == "gaussian":
            rng = np.random.default_rng([self.attack.seed, self.site_seed, round_])
            delta = rng.normal(0.0, self.attack.noise_std, delta.shape)
        elif kind == "sign_flip":
            delta = -delta
        return (self.attack.scale * np.asarray(delta, dtype=np.float64)).astype(np.float32)


@dataclass(frozen=True)
class SuccessRate:
    """A backdoor's attack success rate and the number of triggered inputs it was measured on (a rate on a
    dozen inputs moves by 8 points per input, so every report gives both)."""

    rate: float | None
    triggered: int


def attack_success_rate(
    predict_proba: Callable[[list[str]], np.ndarray], examples: list[Example], label_names: tuple[str, ...],
    attack: AttackSection,
) -> SuccessRate:
    """Backdoor attack success rate: among test inputs of non-target classes that the model classifies
    correctly without the trigger, the fraction classified as the target class once the trigger is inserted
    (the usual conditional definition, e.g. Bagdasaryan et al. 2020, so that plain errors do not count as the
    attack's success).  The trigger goes into held-out texts only.  ``rate`` is ``None`` when no such input
    exists."""
    target = attack.target_index(label_names)
    pool = [(ex, label_names.index(ex.label)) for ex in examples if ex.label != label_names[target]]
    if not pool:
        return SuccessRate(None, 0)
    clean = predict_proba([ex.text for ex, _ in pool]).argmax(1)
    correct = [ex for (ex, y), pred in zip(pool, clean) if pred == y]
    if not correct:
        return SuccessRate(None, 0)
    rng = random.Random(f"asr:{attack.seed}")
    triggered = predict_proba([insert_trigger(ex.text, attack.trigger, rng) for ex in correct]).argmax(1)
    return SuccessRate(float((triggered == target).mean()), len(correct))
