"""The Python steps of benchmarks/gpu_suite.sh: `python -m fastvit.benchmarks.gpu_suite dataset DIR [N_TRAIN N_VAL]`
writes the training check's images, `... summary OUT START_EPOCH_S` judges every check and writes summary.json /
summary.png (exit 1 when one fails).

The training check's data is the built-in procedural dataset (fastvit/data/builtin.py) written as JPEG folders: ten
shape classes in random colours over noisy backgrounds, so colour says nothing about the class and a random
initialisation scores near chance (18% measured by kNN on the CPU), while a few hundred Web-DINO steps learn the
shapes. The check passes only when the trained teacher's kNN beats the random initialisation's by TRAIN_MARGIN_PCT.
"""

import json
import sys
import time
from pathlib import Path

TRAIN_MARGIN_PCT = 5.0  # kNN top-1 points the trained teacher must gain over a random init (150 CPU steps: +7.9)


def write_dataset(root, n_train=1000, n_val=500):
    """root/{train,val}/<class>/<i>.jpg from the built-in dataset (64 px, quality 90)."""
    from PIL import Image

    from fastvit.data.builtin import CLASSES, BuiltinSource

    for split, n in (("train", n_train), ("val", n_val)):
        src = BuiltinSource(split, n=n)
        for name in CLASSES:
            (Path(root) / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = src.read(i)
            Image.fromarray(image).save(Path(root) / split / CLASSES[label] / f"{i:05d}.jpg", quality=90)


def _load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def train_verdict(out):
    """(passed, detail) of the training check from its eval.json: trained kNN vs the random initialisation's."""
    knn = (_load(Path(out) / "train" / "eval.json") or {}).get("knn")
    if not knn or "top1_random_init" not in knn:
        return False, "no kNN result with a random-init baseline in train/eval.json"
    gain = knn["top1"] - knn["top1_random_init"]
    top1, init = knn["top1"], knn["top1_random_init"]
    detail = f"kNN {top1:.1f}% vs random init {init:.1f}% (+{gain:.1f}, need +{TRAIN_MARGIN_PCT})"
    return gain >= TRAIN_MARGIN_PCT, detail


def _log_tail(out, name):
    path = Path(out) / f"{name}.log"
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1][:160] if lines else "no log"


def judge(out, name, rc):
    """(passed, one-line detail) of one check from its exit code and its files."""
    ok = rc == 0
    if name == "compile" and (c := _load(Path(out) / "compile.json")):
        return ok and c["failed"] == 0, f"{len(c['reports'])} (variant, target) compiles, {c['failed']} fail a limit"
    if name == "train":
        passed, detail = train_verdict(out)
        return ok and passed, detail if ok else f"exit {rc}: {_log_tail(out, name)}"
    if name == "step" and (s := _load(Path(out) / "step" / "step.json")):
        mfu = s.get("mfu")
        detail = f"{s.get('images_per_s', 0):.0f} images/s, MFU {mfu:.1%}" if mfu is not None else str(s)[:160]
        return ok, detail
    if name == "kernels" and (k := _load(Path(out) / "kernels" / "kernels.json")):
        rows = k.get("rows", [])
        bad = [r for r in rows if r.get("error") or r.get("spills")]
        return ok and not bad, f"{len(rows)} rows, {len(bad)} with an error or a spill"
    return ok, _log_tail(out, name)


def summary(out, start):
    out = Path(out)
    checks = []
    for line in (out / "checks.tsv").read_text().splitlines():
        name, rc, seconds, cap = line.split("\t")
        passed, detail = judge(out, name, int(rc))
        status = "PASS" if passed else ("TIMEOUT" if int(rc) in (124, 137) else "FAIL")
        checks.append(dict(name=name, status=status, rc=int(rc), seconds=int(seconds), cap=int(cap), detail=detail))
    result = dict(seconds=round(time.time() - start), checks=checks, passed=all(c["status"] == "PASS" for c in checks))
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    for c in checks:
        print(f"{c['status']:<8}{c['name']:<9}{c['seconds']:>5} s (cap {c['cap']:>3})  {c['detail']}")
    verdict = "all checks pass" if result["passed"] else "FAILED"
    print(f"gpu_suite: {verdict} in {result['seconds']} s; {out}/summary.json")
    _plot(checks, result["seconds"], out / "summary.png")
    return 0 if result["passed"] else 1


def _plot(checks, seconds, path):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (760, 40 + 22 * len(checks)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 8), f"fastvit gpu_suite: {seconds} s", fill="black")
    top = max([c["cap"] for c in checks] + [1])
    for i, c in enumerate(checks):
        y = 32 + 22 * i
        draw.text((8, y + 4), f"{c['name']} {c['status']}", fill="black")
        color = (60, 170, 90) if c["status"] == "PASS" else (210, 60, 50)
        draw.rectangle([140, y + 3, 140 + max(int(560 * c["seconds"] / top), 1), y + 18], fill=color)
        draw.text((145 + int(560 * c["seconds"] / top), y + 4), f"{c['seconds']} / {c['cap']} s", fill="black")
    img.save(path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "dataset":
        write_dataset(argv[1], *map(int, argv[2:4]))
        return 0
    if len(argv) == 3 and argv[0] == "summary":
        return summary(argv[1], int(argv[2]))
    raise ValueError("usage: python -m fastvit.benchmarks.gpu_suite dataset DIR [N_TRAIN N_VAL] | summary OUT START")


if __name__ == "__main__":
    sys.exit(main())
