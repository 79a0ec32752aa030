"""The study definition: one TOML file (read with ``tomllib``) -> variants × molecules × seeds and each run's
training configuration and MD settings. Every table is checked for unknown keys, so a misspelling
is an error, not a silently ignored setting.

Arms: the top-level tables define the study's default arm (``[study] arm``, e.g. "equal-epochs"); an
``[arms.NAME]`` table defines another over the same variants, model and recipe: its own ``out`` (records never
mix), its molecules and seeds, a training ``time_budget_minutes`` per model instead of epochs, and an MD
length for every model (``md_time_ps``). ``load_study(path, arm=NAME)`` returns it as a study of its own.
An arm with a time budget may also give ``budget_epochs`` ({molecule: {variant: epochs}}): the epochs the budget
bought on the reference machine. Runs trained from then on take those epochs instead of the clock, so that a
slower or busier machine buys the same training (the time budget's records keep theirs: the two are one budget).

Paths: ``paths.root`` is relative to the TOML file; ``data_dir``, ``out`` and ``potentials`` are relative
to the root (or absolute). Output layout under ``out``:

    records/study.json                         the resolved definition (the report reads it)
    records/<molecule>/<variant>/seed<k>.train.json, .md.json   one record per finished stage
    runs/<molecule>/<variant>/seed<k>/         trainer folder, MD state, job log (not for git)
"""

import copy
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError
from ..md.stability import PRESETS
from ..model import ModelConfig
from ..objective import DEFAULT_RECIPE, RECIPE_ALIASES, RECIPES, TrainConfig
from ..spatial import SPATIAL_BLOCKS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

DEFAULT_ARM = "equal-epochs"  # the name of a file's top-level definition unless [study] arm says otherwise

# keys of [training] that the study sets itself, per run
RUN_SET = {"data", "out", "test", "seed", "epochs", "time_budget", "model", "progress", "threads", "device",
           "n_valid"}


@dataclass(frozen=True)
class Run:
    """One trained model: a variant on a molecule with a seed (initialisation and validation split)."""

    molecule: str
    variant: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.molecule}/{self.variant}/seed{self.seed}"

    def to_dict(self) -> dict:
        return {"molecule": self.molecule, "variant": self.variant, "seed": self.seed}


@dataclass(frozen=True)
class Molecule:
    """Epochs or a training time budget (seconds; the same for every variant), seeds, whether it is a stretch
    goal, and the long MD runs."""

    name: str
    epochs: int | None
    seeds: tuple[int, ...]
    optional: bool = False
    long_md_seeds: tuple[int, ...] = ()
    long_md_ps: float | None = None
    time_budget_s: float | None = None
    budget_epochs: dict = field(default_factory=dict)  # {variant: epochs the time budget bought}; see the module


@dataclass
class Study:
    path: Path
    name: str
    variants: list[str]
    molecules: dict[str, Molecule]
    root: Path
    data_dir: Path
    out: Path
    potentials: Path
    data: dict
    model: dict
    training: dict
    md: dict
    report: dict = field(default_factory=dict)
    sizing: dict = field(default_factory=dict)
    arm: str = DEFAULT_ARM
    arm_option: bool = False  # selected with --arm (not the file's top-level definition)

    # ---- layout ------------------------------------------------------------------------------------
    @property
    def records(self) -> Path:
        return self.out / "records"

    def run_dir(self, run: Run) -> Path:
        return self.out / "runs" / run.molecule / run.variant / f"seed{run.seed}"

    def record_path(self, run: Run, stage: str) -> Path:
        return self.records / run.molecule / run.variant / f"seed{run.seed}.{stage}.json"

    def data_file(self, molecule: str, which: str) -> Path:
        return self.data_dir / self.data[which].format(molecule=molecule)

    # ---- runs --------------------------------------------------------------------------------------
    def select(self, variants=(), molecules=(), seeds=(), stretch: bool = False) -> list[Run]:
        """Runs in a useful order (seed 0 of every cell first); empty selections mean "all".

        Optional molecules are included when named in ``molecules`` or with ``stretch``.
        """
        for name, given, known in (("variant", variants, self.variants), ("molecule", molecules, self.molecules)):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise ConfigError(f"unknown {name}(s) {', '.join(unknown)}; the study has {', '.join(known)}")
        if molecules:
            chosen = [m for m in self.molecules.values() if m.name in molecules]
        else:
            chosen = [m for m in self.molecules.values() if stretch or not m.optional]
        runs = [Run(m.name, v, s) for m in chosen for s in m.seeds for v in self.variants
                if (not variants or v in variants) and (not seeds or s in seeds)]
        order = {s: k for k, s in enumerate(sorted({r.seed for r in runs}))}
        return sorted(runs, key=lambda r: (order[r.seed], list(self.molecules).index(r.molecule),
                                           self.variants.index(r.variant)))

    def train_config(self, run: Run, device: str = "cpu") -> TrainConfig:
        """The trainer's preset with the study's overrides and this run's epochs, seed and variant."""
        settings = dict(self.training)
        recipe = settings.pop("recipe", DEFAULT_RECIPE)
        model = ModelConfig(variant=run.variant, **self.model).to_dict()
        out = self.run_dir(run) / "train"
        return TrainConfig.preset(recipe, str(self.data_file(run.molecule, "train")), str(out), model=model,
                                  **self.length(run), seed=run.seed,
                                  n_valid=self.data["n_valid"], test=str(self.data_file(run.molecule, "test")),
                                  threads=1, device=device, progress=False, **settings)

    def length(self, run: Run) -> dict:
        """The run's training length as TrainConfig settings: epochs, the epochs its time budget bought, or the
        time budget."""
        m = self.molecules[run.molecule]
        if run.variant in m.budget_epochs:
            return {"epochs": m.budget_epochs[run.variant]}
        return {"epochs": m.epochs} if m.time_budget_s is None else {"time_budget": m.time_budget_s}

    def same_budget(self, recorded: dict, run: Run) -> bool:
        """Whether a recorded training config ran this run's time budget on the clock where the study now
        gives the epochs that budget bought (one budget in two forms, not a changed setting)."""
        m = self.molecules[run.molecule]
        return run.variant in m.budget_epochs and recorded.get("time_budget") == m.time_budget_s

    def md_horizons(self, run: Run) -> list[float]:
        """MD lengths (ps) whose results are recorded: the common length, and the long one where it applies."""
        m = self.molecules[run.molecule]
        horizons = {float(self.md["time_ps"])}
        if m.long_md_ps and run.seed in m.long_md_seeds:
            horizons.add(float(m.long_md_ps))
        return sorted(horizons)

    def to_dict(self) -> dict:
        """The resolved definition, as written to records/study.json."""
        return {"name": self.name, "arm": self.arm, "arm_option": self.arm_option, "variants": self.variants,
                "molecules": {k: {"epochs": m.epochs, "time_budget_s": m.time_budget_s, "seeds": list(m.seeds),
                                  "optional": m.optional, "long_md_seeds": list(m.long_md_seeds),
                                  "long_md_ps": m.long_md_ps, "budget_epochs": dict(m.budget_epochs)}
                              for k, m in self.molecules.items()},
                "data": self.data, "model": self.model, "training": self.training, "md": self.md,
                "report": self.report, "source": os.path.relpath(self.path, self.root)}


# ---- reading -----------------------------------------------------------------------------------------
ARM_KEYS = {"name", "out", "molecules", "seeds", "time_budget_minutes", "budget_epochs", "md_time_ps"}
DEFAULTS = {
    "data": {"train": "rmd17_{molecule}_train_01.npz", "test": "rmd17_{molecule}_test_01.npz", "n_valid": 50},
    "md": {"preset": "mdsim-md17", "runs": 5, "time_ps": 10.0, "segment_ps": 1.0, "seed": 0, "dtype": None,
           "compile": True},
    "report": {"baseline": "sake", "alpha": 0.05, "ef_repeats": 20, "primary": "force_rmse_meV_A"},
    "sizing": {"target_minutes": 30.0, "steps": 3, "md_steps": 10},
    "paths": {"root": ".", "data_dir": "../shared/data/rmd17", "out": "study", "potentials": "potentials"},
}
MOLECULE_KEYS = {"epochs", "time_budget_minutes", "budget_epochs", "seeds", "optional", "long_md"}
PRIMARY = {"energy_rmse_meV", "energy_mae_meV", "force_rmse_meV_A", "force_mae_meV_A"}


def load_study(path, data_dir=None, arm: str | None = None) -> Study:
    """Read and check a study file. ``data_dir`` (relative to the working directory) overrides the file's;
    ``arm`` selects an ``[arms.NAME]`` table (None or the file's own arm name: the top-level definition)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study definition not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    _check_keys(raw, {"study", "paths", "data", "model", "training", "md", "molecules", "report", "sizing", "arms"},
                path)
    _check_keys(raw.get("study", {}), {"name", "variants", "seeds", "arm"}, f"{path} [study]")
    raw, arm_name, arm_option = apply_arm(raw, arm, path)
    study = raw.get("study", {})
    tables = {}
    for name, defaults in DEFAULTS.items():
        given = raw.get(name, {})
        _check_keys(given, set(defaults), f"{path} [{name}]")
        tables[name] = {**defaults, **given}
    variants = list(study.get("variants", SPATIAL_BLOCKS))
    unknown = [v for v in variants if v not in SPATIAL_BLOCKS]
    if unknown:
        raise ConfigError(f"{path}: unknown variant(s) {', '.join(unknown)}; known: {', '.join(SPATIAL_BLOCKS)}")
    model = raw.get("model", {})
    if "variant" in model:
        raise ConfigError(f"{path} [model]: the variant is set per run from [study] variants")
    for v in variants:
        ModelConfig(variant=v, **model)  # checks the names and each variant's options
    for name, m in raw.get("molecules", {}).items():
        given = m.get("budget_epochs", {})
        if given and set(given) != set(variants):
            raise ConfigError(f"{path} [molecules.{name}] budget_epochs: give the epochs of every variant "
                              f"({', '.join(variants)}), not of {', '.join(sorted(given)) or 'none'}")
    training = _training(raw.get("training", {}), path)
    md = tables["md"]
    if md["preset"] not in PRESETS:
        raise ConfigError(f"{path} [md]: unknown preset {md['preset']!r}; known: {', '.join(PRESETS)}")
    if tables["report"]["primary"] not in PRIMARY:
        raise ConfigError(f"{path} [report]: primary must be one of {', '.join(sorted(PRIMARY))} (a test error, "
                          "stated before the runs)")
    seeds = tuple(study.get("seeds", (0,)))
    molecules = {name: _molecule(name, m, seeds, path) for name, m in raw.get("molecules", {}).items()}
    if not molecules:
        raise ConfigError(f"{path}: no [molecules.NAME] tables")
    p = tables["paths"]
    root = (path.parent / p["root"]).resolve()
    data = Path(data_dir).resolve() if data_dir else (root / p["data_dir"]).resolve()
    return Study(path.resolve(), study.get("name", path.stem), variants, molecules, root, data,
                 (root / p["out"]).resolve(), (root / p["potentials"]).resolve(), tables["data"], model, training,
                 md, tables["report"], tables["sizing"], arm_name, arm_option)


def apply_arm(raw: dict, arm: str | None, path) -> tuple[dict, str, bool]:
    """The study file's tables with arm ``arm`` applied: (tables, the arm's name, whether it is an
    ``[arms.NAME]`` arm). Its molecules keep their data but take the arm's seeds, budget and MD length."""
    own = raw.get("study", {}).get("arm", DEFAULT_ARM)
    arms = raw.get("arms", {})
    if arm is None or arm == own:
        return raw, own, False
    if arm not in arms:
        raise ConfigError(f"{path}: no arm {arm!r}; the file defines {', '.join([own, *arms])}")
    table = arms[arm]
    _check_keys(table, ARM_KEYS, f"{path} [arms.{arm}]")
    if "out" not in table or table["out"] == raw.get("paths", {}).get("out", DEFAULTS["paths"]["out"]):
        raise ConfigError(f"{path} [arms.{arm}]: give the arm an out folder of its own, so that its records never "
                          "mix with another arm's")
    raw = copy.deepcopy(raw)
    molecules = raw.get("molecules", {})
    chosen = table.get("molecules", list(molecules))
    unknown = sorted(set(chosen) - set(molecules))
    if unknown:
        raise ConfigError(f"{path} [arms.{arm}]: unknown molecule(s) {', '.join(unknown)}; the file has "
                          f"{', '.join(molecules)}")
    arm_molecules = {}
    for name in chosen:  # the arm's molecules are all required, with every model run for the arm's MD length
        m = {k: v for k, v in molecules[name].items() if k not in ("optional", "long_md", "seeds")}
        if "time_budget_minutes" in table:
            m.pop("epochs", None)
            m["time_budget_minutes"] = table["time_budget_minutes"]
        if "seeds" in table:
            m["seeds"] = table["seeds"]
        if "budget_epochs" in table:
            if name not in table["budget_epochs"]:
                raise ConfigError(f"{path} [arms.{arm}] budget_epochs: no epochs for {name}")
            m["budget_epochs"] = table["budget_epochs"][name]
        arm_molecules[name] = m
    raw["molecules"] = arm_molecules
    if "md_time_ps" in table:
        raw["md"] = {**raw.get("md", {}), "time_ps": table["md_time_ps"]}
    raw["paths"] = {**raw.get("paths", {}), "out": table["out"]}
    study = raw.setdefault("study", {})
    study.pop("arm", None)
    study["name"] = table.get("name", f"{study.get('name', Path(path).stem)}: {arm}")
    return raw, arm, True


def _check_keys(table: dict, known: set, where) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _training(table: dict, path: Path) -> dict:
    recipe = table.get("recipe", DEFAULT_RECIPE)
    if RECIPE_ALIASES.get(recipe, recipe) not in RECIPES:
        raise ConfigError(f"{path} [training]: unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    set_per_run = sorted(set(table) & RUN_SET)
    if set_per_run:
        raise ConfigError(f"{path} [training]: {', '.join(set_per_run)} are set by the study per run "
                          "(epochs in [molecules.NAME], n_valid in [data])")
    _check_keys(table, {f.name for f in fields(TrainConfig)} - RUN_SET, f"{path} [training]")
    return dict(table)


def _molecule(name: str, table: dict, seeds: tuple, path: Path) -> Molecule:
    _check_keys(table, MOLECULE_KEYS, f"{path} [molecules.{name}]")
    budget = table.get("time_budget_minutes")
    if ("epochs" in table) == (budget is not None):
        raise ConfigError(f"{path} [molecules.{name}]: give exactly one of epochs and time_budget_minutes (the same "
                          "for every variant of the molecule)")
    if budget is not None and (not isinstance(budget, (int, float)) or budget <= 0):
        raise ConfigError(f"{path} [molecules.{name}]: time_budget_minutes must be a positive number")
    if budget is None and (not isinstance(table.get("epochs"), int) or table["epochs"] < 1):
        raise ConfigError(f"{path} [molecules.{name}]: epochs must be a positive integer (the same for every "
                          "variant of the molecule)")
    epochs_bought = table.get("budget_epochs", {})
    if epochs_bought and budget is None:
        raise ConfigError(f"{path} [molecules.{name}]: budget_epochs are the epochs a time budget bought; give "
                          "time_budget_minutes with them")
    if not isinstance(epochs_bought, dict) or any(not isinstance(e, int) or isinstance(e, bool) or e < 1
                                                   for e in epochs_bought.values()):
        raise ConfigError(f"{path} [molecules.{name}]: budget_epochs must map each variant to a positive integer")
    long_md = table.get("long_md", {})
    _check_keys(long_md, {"seeds", "time_ps"}, f"{path} [molecules.{name}] long_md")
    return Molecule(name, table.get("epochs"), tuple(table.get("seeds", seeds)), bool(table.get("optional", False)),
                    tuple(long_md.get("seeds", ())), long_md.get("time_ps"),
                    None if budget is None else 60.0 * float(budget), dict(epochs_bought))
