"""Make a finished run's best.pt its last epoch (the weight average that epoch validated), as ``--select last``
would have, then re-centre its energy shift and test it (``train.finalize``). The old best.pt is kept as
best_epoch<k>.pt.

The fine-tune of session 15 (`finetune.sh`, before `--select` existed) picked epoch 1 by validation force MAE:
its validation frames are the start potential's own held-out frames, on which the start potential is best before
training on anything new, so the selection returned the start potential.

    python md_runs/stability/select_last.py runs/stability/finetune_ethanol
"""

import argparse
import json
import shutil
from pathlib import Path

from sake_md.checkpoint import potential_from_dict, read_checkpoint, save_checkpoint
from sake_md.objective import WeightAverage
from sake_md.train import finalize, load_split, read_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    out = parser.parse_args().run
    cfg, last = read_config(out), read_checkpoint(out / "last.pt")
    potential = potential_from_dict(last, str(out / "last.pt"))
    average = WeightAverage(potential, cfg.ema_decay or 0.5)
    if "weight_average" in last["extra"]:
        average.load_state_dict(last["extra"]["weight_average"])
    best = read_checkpoint(out / "best.pt")
    shutil.copy2(out / "best.pt", out / f"best_epoch{best['training']['best_epoch']}.pt")
    training = dict(last["training"], best_epoch=last["training"]["epochs"])
    with average.swapped():
        save_checkpoint(out / "best.pt", potential, training, last["metrics"])
    report = finalize(cfg, out, load_split(cfg)[0])
    print(json.dumps({"best_epoch": training["best_epoch"], "validation": last["metrics"]["validation"],
                      "test": report}, indent=1))


if __name__ == "__main__":
    main()
