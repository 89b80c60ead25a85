"""Rule evaluation of proposition_prompts.yaml (RBR): propositions -> completion class.

Truth values are three-valued (True / False / None = unknown, Kleene logic) so that
partially labelled examples (synthetic or weakly labelled) get a class whenever the
known propositions already decide it, and None otherwise.
"""
from __future__ import annotations

import yaml

# Names used in the data ("Safe Refuse 1") -> names used in the spec and the model.
RESPONSE_TYPES = ["comply", "hard_refuse", "safe_refuse_1", "safe_refuse_2"]
DATA_RESPONSE_TYPE = {
    "Comply": "comply",
    "Hard Refuse": "hard_refuse",
    "Safe Refuse 1": "safe_refuse_1",
    "Safe Refuse 2": "safe_refuse_2",
}
# Soft PRM targets, best class first (order of completion_class_order).
CLASS_VALUE = {
    "ideal": 1.0,
    "minimum_acceptable_style": 0.75,
    "unacceptable_completion": 0.5,
    "illogical_completion": 0.25,
    "disallowed_completion": 0.0,
}


def _and(values):
    """Kleene AND over an iterable of True/False/None."""
    unknown = False
    for v in values:
        if v is False:
            return False
        if v is None:
            unknown = True
    return None if unknown else True


def _eq(v, want):
    return None if v is None else (v == want)


class Rules:
    def __init__(self, spec_path: str):
        with open(spec_path, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
        self.simple = list(spec["simple_propositions"].keys())
        self.class_order = list(spec["completion_class_order"])
        # Derived propositions may reference earlier ones; YAML keeps file order.
        self.derived = {k: dict(v) for k, v in spec["derived_propositions"].items()}
        self.classes = {k: {rt: dict(c) for rt, c in v.items()} for k, v in spec["completion_classes"].items()}
        assert set(self.classes) == set(self.class_order)

    def truth(self, props: dict) -> dict:
        """Simple + derived truth values (None where unknown)."""
        t = {p: props.get(p) for p in self.simple}
        for name, conds in self.derived.items():
            t[name] = _and(_eq(t[k], v) for k, v in conds.items())
        return t

    def classify(self, props: dict, response_type: str):
        """Class name for a completion, or None if the known propositions do not decide it.

        A class is decided when one class is certainly true, or when all classes before
        the first possibly-true one are certainly false and it alone remains possible.
        """
        t = self.truth(props)
        possible = []
        for cls in self.class_order:
            conds = self.classes[cls][response_type]
            v = _and(_eq(t[k], want) for k, want in conds.items())
            if v is True:
                return cls  # classes are mutually exclusive, so the others are false
            if v is None:
                possible.append(cls)
        if len(possible) == 1:
            return possible[0]  # exhaustive rules: the only remaining class
        if not possible:
            raise ValueError(f"no class matches for {response_type}: {props}")
        return None

    def referenced(self, response_type: str) -> set:
        """Simple propositions the rules read for this response type (derived ones expanded)."""
        out, stack = set(), [k for c in self.class_order for k in self.classes[c][response_type]]
        while stack:
            k = stack.pop()
            if k in self.derived:
                stack.extend(self.derived[k])
            else:
                out.add(k)
        return out
