"""The command line's side of settings: option values (``sake-md train``/``compare``) -> library settings,
and the text forms of durations and run lengths that only the command line reads."""

import re

from .errors import InputError, SakeMDError
from .model import ModelConfig
from .objective import DEFAULT_RECIPE, TrainConfig


def config_from_options(options: dict) -> TrainConfig:
    """Command-line options (``sake-md train``) -> TrainConfig; None means "the recipe's default"."""
    o = dict(options)
    model = ModelConfig(**{k: o.pop(k) for k in ("hidden", "heads", "layers", "radial")},
                        variant=o.pop("variant"), options=o.pop("model_options", None) or {},
                        cutoff=o.pop("cutoff", None)).to_dict()
    model = o.pop("init_model", None) or model  # --init: the checkpoint's, all of it
    budget = o.pop("time_budget")
    o["progress"] = not o.pop("no_progress")
    return TrainConfig.preset(o.pop("recipe") or DEFAULT_RECIPE, o.pop("data"), o.pop("out"), model=model,
                              time_budget=parse_duration(budget) if budget else None, **o)


def parse_duration(text: str) -> float:
    """'30m', '1h30m', '90s', '2h' or a number of seconds -> seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(f"{a}{b}" for a, b in parts) != text.replace(" ", ""):
        raise SakeMDError(f"cannot read the duration {text!r}; use e.g. 30m, 1h30m, 90s")
    return sum(float(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts)


def parse_time_ps(text: str) -> float:
    """'10ps', '500fs', '0.3ns' or a bare number of ps -> ps."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(fs|ps|ns)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"cannot read the time {text!r}; write e.g. 10ps, 500fs or 0.3ns")
    return float(m.group(1)) * {"fs": 1e-3, "ps": 1.0, "ns": 1e3}[m.group(2) or "ps"]
