"""Writes python/edgellm/models/default/calibration_sample.py.txt: calibration text
for `edgellm.quantize` of the embedded default model, drawn from its *training*
split (the CPython standard library minus the held-out files; same rules as
scripts/train_default_model.py), so it never overlaps the held-out evaluation text.

Every 10th training file (sorted by relative path), its first ~1,500 characters
cut at a line end, joined by blank lines, up to 48,000 characters.

    python scripts/make_calibration_sample.py
"""

import hashlib
import os
import sysconfig
from pathlib import Path

SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
MAX_FILE_BYTES = 400_000
HELDOUT_MOD = 20
EVERY = 10
PER_FILE = 1_500
TOTAL = 48_000
OUT = Path(__file__).resolve().parents[1] / "python" / "edgellm" / "models" / "default" / "calibration_sample.py.txt"


def is_heldout(rel: str) -> bool:
    return int(hashlib.sha1(rel.encode()).hexdigest(), 16) % HELDOUT_MOD == 0


def training_files(stdlib: Path):
    paths = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        paths += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    for rel, p in sorted((p.relative_to(stdlib).as_posix(), p) for p in paths):
        if p.stat().st_size > MAX_FILE_BYTES or is_heldout(rel):
            continue
        try:
            yield rel, p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue


def main() -> None:
    heldout = set((OUT.parent / "heldout_files.txt").read_text().split())
    parts, size = [], 0
    for i, (rel, text) in enumerate(training_files(Path(sysconfig.get_paths()["stdlib"]))):
        assert rel not in heldout
        if i % EVERY:
            continue
        cut = text.rfind("\n", 0, PER_FILE)
        piece = text[: cut + 1] if cut > 0 else text[:PER_FILE]
        if size + len(piece) > TOTAL:
            break
        parts.append(piece)
        size += len(piece) + 2
    OUT.write_text("\n\n".join(parts), encoding="utf-8")
    print(f"{OUT}: {len(parts)} files, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
