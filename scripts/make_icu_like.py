"""Write synthetic ICU records in the PhysioNet 2012 challenge's file format (for benchmarks).

    python scripts/make_icu_like.py DIR [--patients 4000] [--sets a b] [--seed 0]

writes ``DIR/set-<x>/<RecordID>.txt`` and ``DIR/Outcomes-<x>.txt`` for each set: what
``latentode.data.load_dataset("physionet", root=DIR)`` and the paper code's ``PhysioNet`` class
read. Nothing here is real patient data; it imitates the *shape* of PhysioNet 2012 that decides
the cost of training on it: 48-hour stays, each patient observed at its own minutes (vital signs
about hourly from a random start, labs every ~8 h, extra single measurements), 37 channels of
which a few are observed at each time (arterial or non-invasive blood pressure per patient,
ventilation for some), ~70-90 distinct times and ~300 values per patient, so that a batch of 50
patients has a union of ~3,000 minutes.

Values come from a latent process per patient (a damped oscillation and a drift, 4 dimensions,
random rates) mapped linearly to the 37 channels plus noise, then every channel is scaled to
min 0 and max 1 over all patients of all sets written together (and rounded to 6 decimals, the
extremes exactly 0 and 1). With that the paper code's scaling ``(x - min) / max`` over the pooled
sets is the identity, and ``data.scale=false`` gives latentode the same units: test MSEs of the
two codes on these files are comparable. The descriptors Age, Gender, Height and ICUType are
written at 00:00 as 0 for everyone (no information; the paper code reads them as channels at
time 0 and fails on a channel never observed); Weight is only a lab value.
``In-hospital_death`` in the outcomes is a Bernoulli draw depending on the latent start.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

VITALS: dict[str, float] = {"HR": 0.95, "RespRate": 0.6, "Temp": 0.3, "Urine": 0.7,
                            "GCS": 0.15, "SaO2": 0.2}
"""Vital signs and the chance that each is charted at a vital-sign time."""
BP_INVASIVE = ("DiasABP", "SysABP", "MAP")
BP_NONINVASIVE = ("NIDiasABP", "NISysABP", "NIMAP")
LABS: dict[str, float] = {"BUN": 0.9, "Creatinine": 0.9, "Glucose": 0.9, "HCO3": 0.9, "HCT": 0.9,
                          "K": 0.9, "Mg": 0.8, "Na": 0.9, "Platelets": 0.9, "WBC": 0.9, "pH": 0.4,
                          "PaCO2": 0.4, "PaO2": 0.4, "Lactate": 0.2, "ALP": 0.15, "ALT": 0.15,
                          "AST": 0.15, "Bilirubin": 0.15, "Albumin": 0.1, "TroponinT": 0.05,
                          "TroponinI": 0.03, "Cholesterol": 0.02, "Weight": 0.1}
"""Laboratory values and the chance that each is in a lab draw."""
EXTRA = ("HR", "Urine", "MAP", "NIMAP", "Temp", "GCS")
"""Parameters of the extra single measurements between the routine times."""
VENTILATION = ("MechVent", "FiO2")
DESCRIPTORS = ("Age", "Gender", "Height", "ICUType")
MINUTES = 48 * 60


def channels() -> list[str]:
    """The 37 challenge channels written, in latentode's ``physionet.CHANNELS`` order."""
    from latentode.data.sources.physionet import CHANNELS

    return list(CHANNELS)


def _times(rng: np.random.Generator) -> dict[int, list[str]]:
    """Minute -> parameters charted at that minute, for one patient."""
    at: dict[int, list[str]] = {}
    invasive = rng.random() < 0.5
    ventilated = rng.random() < 0.4
    bp = BP_INVASIVE if invasive else BP_NONINVASIVE
    interval = 30 if rng.random() < 0.2 else 60
    minute = int(rng.integers(0, 90))
    while minute < MINUTES:
        names = [v for v, p in VITALS.items() if rng.random() < p]
        if rng.random() < 0.9:
            names += list(bp)
        if ventilated and rng.random() < 0.3:
            names += list(VENTILATION)
        at.setdefault(minute, []).extend(names)
        minute += max(5, round(rng.normal(interval, interval / 6)))
    minute = int(rng.integers(0, 240))
    while minute < MINUTES:
        at.setdefault(minute, []).extend(v for v, p in LABS.items() if rng.random() < p)
        minute += max(60, round(rng.normal(8 * 60, 120)))
    for minute in rng.integers(0, MINUTES, size=int(rng.integers(10, 30))):
        at.setdefault(int(minute), []).append(str(rng.choice(EXTRA)))
    return {m: sorted(set(names)) for m, names in sorted(at.items()) if names}


def _latent(hours: np.ndarray, z0: np.ndarray, omega: float, decay: float, drift: float
            ) -> np.ndarray:
    """A damped rotation of (z0[0], z0[1]), a drift z0[2] + drift t and a relaxation of z0[3]."""
    c, s = np.cos(omega * hours), np.sin(omega * hours)
    damp = np.exp(-decay * hours)
    return np.stack([damp * (c * z0[0] - s * z0[1]), damp * (s * z0[0] + c * z0[1]),
                     z0[2] + drift * hours / 48, z0[3] * np.exp(-hours / 12)], axis=-1)


def generate(n_patients: int, n_sets: int = 1, seed: int = 0) -> list[list[tuple[int, str, list]]]:
    """Per set, per patient: (RecordID, in-hospital death "0"/"1", [(minute, name, value)])."""
    rng = np.random.default_rng(seed)
    names = channels()
    index = {name: c for c, name in enumerate(names)}
    mixing = rng.normal(size=(4, len(names)))
    raw = []  # per set, per patient: (RecordID, death, minutes, channel indices, values)
    record_id = 132539
    for _ in range(n_sets):
        patients = []
        for _ in range(n_patients):
            schedule = _times(rng)
            z0 = rng.normal(size=4)
            hours = np.array(list(schedule), dtype=float) / 60
            z = _latent(hours, z0, omega=rng.uniform(0.1, 0.5), decay=rng.uniform(0.0, 0.05),
                        drift=rng.normal(0, 1))
            point = np.array([i for i, m in enumerate(schedule) for _ in schedule[m]])
            channel = np.array([index[n] for m in schedule for n in schedule[m]])
            values = (z[point] * mixing[:, channel].T).sum(-1) + 0.05 * rng.normal(size=len(point))
            minutes = np.array(list(schedule))[point]
            death = int(rng.random() < 1 / (1 + np.exp(-(z0[0] + z0[2] - 2))))
            patients.append((record_id, str(death), minutes, channel, values))
            record_id += 1
        raw.append(patients)
    channel = np.concatenate([p[3] for s in raw for p in s])
    values = np.concatenate([p[4] for s in raw for p in s])
    low = np.full(len(names), np.inf)
    high = np.full(len(names), -np.inf)
    np.minimum.at(low, channel, values)
    np.maximum.at(high, channel, values)
    span = np.where(high > low, high - low, 1.0)
    return [[(rid, death, [(int(m), names[c], float((v - low[c]) / span[c]))
                           for m, c, v in zip(minutes, chans, vals, strict=True)])
             for rid, death, minutes, chans, vals in patients] for patients in raw]


def write(out: Path, n_patients: int, sets: list[str], seed: int = 0) -> None:
    """Write ``out/set-<x>/`` and ``out/Outcomes-<x>.txt`` for each letter in ``sets``."""
    for letter, patients in zip(sets, generate(n_patients, len(sets), seed), strict=True):
        set_dir = out / f"set-{letter}"
        set_dir.mkdir(parents=True, exist_ok=True)
        outcomes = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
        for record_id, death, rows in patients:
            lines = ["Time,Parameter,Value", f"00:00,RecordID,{record_id}"]
            lines += [f"00:00,{name},0" for name in DESCRIPTORS]
            lines += [f"{m // 60:02d}:{m % 60:02d},{name},{value:.6f}" for m, name, value in rows]
            (set_dir / f"{record_id}.txt").write_text("\n".join(lines) + "\n")
            outcomes.append(f"{record_id},-1,-1,5,-1,{death}")
        (out / f"Outcomes-{letter}.txt").write_text("\n".join(outcomes) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--patients", type=int, default=4000, help="patients per set")
    parser.add_argument("--sets", nargs="+", default=["a"], help="set letters, e.g. a b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.out, args.patients, args.sets, args.seed)
    print(f"wrote {args.patients} patients x {len(args.sets)} set(s) under {args.out}")


if __name__ == "__main__":
    main()
