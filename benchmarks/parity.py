"""Learning parity: fastvit's demo recipe against the same run written with lightly + timm.

    python -m fastvit.benchmarks.parity [--python PY] [--data builtin|imagefolder:TRAIN --val imagefolder:VAL]
        [--steps 500] [--seeds 1] [--out DIR] [--eval-images 2000] [--smoke] [key=value ... (fastvit overrides)]

Both sides train on the same labelled image folder (the built-in dataset is first written out as PNG files,
so both read the same pixels through their own loaders) for the same number of steps and batch; every value
the two sides share comes from the demo recipe with the run's overrides (recipe_hparams):
  fastvit  `fastvit train demo` (192 wide, 6 blocks, patch 8, 48 px, 2 x 48 + 4 x 24 crops, DINO + iBOT +
           KoLeo, heads 512 / 128 / 256), in this interpreter, as a subprocess;
  lightly  timm's VisionTransformer (the same sizes, GELU MLP, LayerScale 0.1, learned position embedding)
           in lightly's MaskedVisionTransformerTIMM, lightly's DINOv2 heads, DINOLoss + IBOTPatchLoss +
           KoLeoLoss (softmax centering, as lightly implements them), lightly's DINOTransform and
           random_block_mask, AdamW with the demo's lr / weight-decay / warmup / teacher schedules; run by
           `--python` (an interpreter where lightly, timm and torchvision are installed; this script is the
           only place fastvit touches them, and that side imports no fastvit).
Both sides' frozen teacher backbones (and a random initialisation of each) embed the same evaluation tensors
(fastvit's eval transform of a seeded, class-balanced `--eval-images` subset of each split) and one kNN code
(fastvit.eval.knn, k=20, T=0.07) scores them: top-1 in percent before / after, the gain per step and per
minute of training wall time. `--seeds N` trains each side N times (train.seed 0 .. N-1; the evaluation
tensors stay those of seed 0) and prints the mean and spread (sample standard deviation) of the gain per step and
per minute over the seeds. Writes parity.json into --out. A side whose packages are missing is skipped
with the reason (CI's smoke mode runs the fastvit side only unless lightly is installed there).
"""

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time

import torch


def recipe_hparams(cfg):
    """What the lightly side needs of the fastvit run's config (the demo recipe with the same overrides), so both
    sides train the same model with the same crops, heads, schedules and teacher: one source for each value."""
    m, d, o, op = cfg.model, cfg.data, cfg.objective.web_dino, cfg.optim
    return {
        "img": d.global_crops_size,
        "local": d.local_crops_size,
        "n_local": d.n_local_crops,
        "global_scale": list(d.global_crops_scale),
        "local_scale": list(d.local_crops_scale),
        "patch": m.patch_size,
        "width": m.width,
        "depth": m.depth,
        "heads": m.heads,
        "layerscale": m.layerscale_init,
        "batch": cfg.train.batch_size,
        "hidden": o.head_hidden_dim,
        "dino_bottleneck": o.dino_bottleneck_dim,
        "ibot_bottleneck": o.ibot_bottleneck_dim,
        "out_dim": o.dino_out_dim,
        "teacher_temp": [o.teacher_temp_warmup, o.teacher_temp],
        "teacher_temp_warmup": o.teacher_temp_warmup_steps,
        "momentum": [o.momentum_teacher, o.momentum_teacher_final],
        "koleo": o.koleo_weight,
        "lr": op.lr,
        "min_lr": op.min_lr,
        "warmup": op.warmup_steps,
        "wd": [op.weight_decay, op.weight_decay_end],
        "clip": op.clip_grad,
        "freeze_last": op.freeze_last_layer_steps,
    }


SMOKE = {"steps": 2, "train_n": 64, "val_n": 40, "eval_images": 40}


# ---------------------------------------------------------------------------------------------------------------
# driver (this interpreter, fastvit installed)


def write_builtin_folders(root, train_n, val_n):
    """The built-in dataset's train / val streams as PNG class folders (the pixels fastvit's `builtin` renders)."""
    from PIL import Image

    from fastvit.data.builtin import CLASSES, BuiltinSource

    for split, n in (("train", train_n), ("val", val_n)):
        src = BuiltinSource(split, n=n)
        done = os.path.join(root, split, ".complete")
        if os.path.isfile(done) and len(os.listdir(os.path.join(root, split))) == len(CLASSES) + 1:
            continue
        for c in CLASSES:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
        for i in range(n):
            img, label = src.read(i)
            Image.fromarray(img).save(os.path.join(root, split, CLASSES[label], f"{i:05d}.png"))
        open(done, "w").close()
    return os.path.join(root, "train"), os.path.join(root, "val")


def eval_tensors(train_dir, val_dir, size, max_images, seed=0):
    """{train_x, train_y, val_x, val_y}: fastvit's eval transform of a seeded, class-balanced subset per split."""
    from fastvit.data import source_from_spec
    from fastvit.eval.features import labelled_batches
    from fastvit.eval.subset import eval_indices

    out = {}
    for split, folder in (("train", train_dir), ("val", val_dir)):
        src = source_from_spec(f"imagefolder:{folder}")
        idx, _ = eval_indices(src, max_images, seed=seed, split=split)
        xs, ys = zip(*labelled_batches(src, size, 256, idx), strict=True)
        out[f"{split}_x"], out[f"{split}_y"] = torch.cat(xs), torch.cat(ys)
    return out


@torch.no_grad()
def embed(backbone_fn, x, batch=256):
    return torch.cat([backbone_fn(x[i : i + batch]).float() for i in range(0, len(x), batch)])


def training_seconds(metrics_path, batch):
    """Seconds the logged steps took (steps x batch / images_per_s per metrics row): the training loop alone,
    without the process start, the CPU peak measurement and the final checkpoint (as the lightly side counts)."""
    seconds, last = 0.0, 0
    with open(metrics_path) as f:
        for line in f:
            row = json.loads(line)
            if "images_per_s" in row:  # the step-0 kNN row of train.eval_every trained nothing
                seconds += (row["step"] - last) * batch / row["images_per_s"]
                last = row["step"]
    return seconds


def run_fastvit(args, seed, train_dir, tensors, overrides):
    """(training seconds, features before, features after): `fastvit train demo` as a subprocess."""
    from fastvit.config import read_config
    from fastvit.eval.run import load_teacher_backbone, random_backbone
    from fastvit.train import checkpoint as ckpt

    run = os.path.join(args.out, f"seed{seed}", "fastvit")
    cmd = [sys.executable, "-m", "fastvit.cli", "train", "demo", f"data.source=imagefolder:{train_dir}"]
    cmd += ["data.val_source=", f"train.steps={args.steps}", f"train.out={run}", "train.checkpoint_every=0"]
    cmd += ["train.log_every=10", *overrides, f"train.seed={seed}"]
    if os.path.isdir(os.path.join(run, "checkpoints")):
        raise ValueError(f"{run} holds a previous run; pass a fresh --out")
    subprocess.run(cmd, check=True)
    seconds = training_seconds(os.path.join(run, "metrics.jsonl"), args.hparams["batch"])
    cfg = read_config(os.path.join(run, "config.yaml"))
    feats = {}
    for when, backbone in (
        ("before", random_backbone(cfg)),
        ("after", load_teacher_backbone(cfg, ckpt.latest_checkpoint(run))),
    ):
        backbone.eval()
        fn = lambda x, b=backbone: b(x)["cls"]
        feats[when] = (embed(fn, tensors["train_x"]), embed(fn, tensors["val_x"]))
    return seconds, feats


def lightly_ready(python):
    """None when `python` imports lightly, timm and torchvision, else the reason."""
    probe = subprocess.run([python, "-c", "import lightly, timm, torchvision"], capture_output=True, text=True)
    return None if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["import failed"])[-1]


def run_lightly(args, seed, train_dir, tensors_path):
    """(train wall seconds, features before, features after): this file's --lightly-worker under args.python."""
    os.makedirs(os.path.join(args.out, f"seed{seed}"), exist_ok=True)
    result = os.path.join(args.out, f"seed{seed}", "lightly_features.pt")
    cmd = [args.python, os.path.abspath(__file__), "--lightly-worker", "--train-dir", train_dir, "--seed", str(seed)]
    cmd += ["--steps", str(args.steps), "--tensors", tensors_path, "--result", result, "--workers", str(args.workers)]
    cmd += ["--hparams", json.dumps(args.hparams)]
    subprocess.run(cmd, check=True)
    saved = torch.load(result, weights_only=True)
    return saved["seconds"], {w: (saved[f"{w}_train"], saved[f"{w}_val"]) for w in ("before", "after")}


def score(feats, tensors):
    from fastvit.eval.knn import knn_accuracy

    ty, vy = tensors["train_y"], tensors["val_y"]
    return {w: knn_accuracy(tr, ty, va, vy, k=20, temperature=0.07) for w, (tr, va) in feats.items()}


def side_result(seed, seconds, top1, steps):
    gain = top1["after"] - top1["before"]
    return {
        "seed": seed,
        "train_seconds": seconds,
        "top1_before": top1["before"],
        "top1_after": top1["after"],
        "gain": gain,
        "gain_per_step": gain / max(steps, 1),
        "gain_per_minute": gain / (seconds / 60),
    }


def summary(runs):
    """Mean and spread (sample standard deviation; 0 for one run) of each number of a side's runs."""
    out = {}
    for key in ("train_seconds", "top1_before", "top1_after", "gain", "gain_per_step", "gain_per_minute"):
        t = torch.tensor([r[key] for r in runs], dtype=torch.float64)
        out[key] = t.mean().item()
        out[f"{key}_std"] = t.std().item() if len(t) > 1 else 0.0
    return out


def print_report(report, steps):
    print(f"kNN top-1 (%) on {report['val_images']} val images, fitted on {report['train_images']}; {steps} steps")
    cols = ("before", 7), ("after", 7), ("gain", 6), ("train s", 8), ("gain/step", 10), ("gain/min", 9)
    print(f"{'side':<9} {'seed':>4} " + " ".join(f"{c:>{w}}" for c, w in cols))
    for name, runs in report["runs"].items():
        for r in runs:
            print(
                f"{name:<9} {r['seed']:>4} {r['top1_before']:>7.1f} {r['top1_after']:>7.1f} {r['gain']:>6.1f} "
                f"{r['train_seconds']:>8.0f} {r['gain_per_step']:>10.4f} {r['gain_per_minute']:>9.2f}"
            )
    print(f"mean +- std over {report['seeds']} seed(s):")
    for name, m in report["sides"].items():
        print(
            f"{name:<9} gain {m['gain']:.1f} +- {m['gain_std']:.1f} points, "
            f"per step {m['gain_per_step']:.4f} +- {m['gain_per_step_std']:.4f}, "
            f"per minute {m['gain_per_minute']:.2f} +- {m['gain_per_minute_std']:.2f}"
        )


def driver(args, overrides):
    os.makedirs(args.out, exist_ok=True)
    smoke = SMOKE if args.smoke else {}
    args.steps = smoke.get("steps", args.steps)
    eval_images = smoke.get("eval_images", args.eval_images)
    if args.data == "builtin":
        n_train, n_val = smoke.get("train_n", 5000), smoke.get("val_n", 1000)
        train_dir, val_dir = write_builtin_folders(os.path.join(args.out, "data"), n_train, n_val)
    else:
        if not args.data.startswith("imagefolder:") or not args.val.startswith("imagefolder:"):
            raise ValueError("--data and --val take imagefolder:PATH (or --data builtin)")
        train_dir, val_dir = args.data.partition(":")[2], args.val.partition(":")[2]
    if args.smoke:
        overrides = ["data.num_workers=0", "train.log_every=1", *overrides]
    from fastvit.config import load_config

    args.hparams = recipe_hparams(load_config("demo", [*overrides, f"train.steps={args.steps}"]))
    tensors = eval_tensors(train_dir, val_dir, args.hparams["img"], eval_images)
    tensors_path = os.path.join(args.out, "eval_tensors.pt")
    torch.save(tensors, tensors_path)
    report = {"steps": args.steps, "data": args.data, "eval_images": eval_images, "hparams": args.hparams}
    report.update(train_images=len(tensors["train_y"]), val_images=len(tensors["val_y"]), unit="percent")
    report["seeds"] = args.seeds
    sides = {"fastvit": lambda seed: run_fastvit(args, seed, train_dir, tensors, overrides)}
    reason = lightly_ready(args.python)
    if reason is None:
        sides["lightly"] = lambda seed: run_lightly(args, seed, train_dir, tensors_path)
    else:
        report["lightly_skipped"] = f"{args.python}: {reason}"
        print(f"parity: lightly side skipped ({args.python} cannot import lightly, timm, torchvision: {reason})")
    report["runs"] = {name: [] for name in sides}
    for seed in range(args.seeds):  # one seed of both sides at a time: a cut-short run still compares them
        for name, run in sides.items():
            seconds, feats = run(seed)
            top1 = score(feats, tensors)
            report["runs"][name].append(side_result(seed, seconds, top1, args.steps))
    report["sides"] = {name: summary(runs) for name, runs in report["runs"].items()}
    print_report(report, args.steps)
    with open(os.path.join(args.out, "parity.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


# ---------------------------------------------------------------------------------------------------------------
# lightly + timm side (runs under --python; imports no fastvit)


def cosine(step, total, start, end, warmup=0):
    """The demo's schedules: linear warmup 0 -> start, then cosine start -> end."""
    if step < warmup:
        return start * step / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def lightly_worker(args):
    import timm
    import torchvision
    from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
    from lightly.models.modules import DINOv2ProjectionHead, MaskedVisionTransformerTIMM
    from lightly.models.utils import random_block_mask, update_momentum
    from lightly.transforms.dino_transform import DINOTransform

    torch.manual_seed(args.seed)
    d = json.loads(args.hparams)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=d["img"],
        patch_size=d["patch"],
        embed_dim=d["width"],
        depth=d["depth"],
        num_heads=d["heads"],
        init_values=d["layerscale"],
        dynamic_img_size=True,
        num_classes=0,
    )
    student = MaskedVisionTransformerTIMM(vit=vit, antialias=False, pos_embed_initialization="learn")

    def make_heads():
        return torch.nn.ModuleDict(
            {
                "dino": DINOv2ProjectionHead(d["width"], d["hidden"], d["dino_bottleneck"], d["out_dim"]),
                "ibot": DINOv2ProjectionHead(d["width"], d["hidden"], d["ibot_bottleneck"], d["out_dim"]),
            }
        )

    heads, teacher_heads = make_heads(), make_heads()  # weight_norm modules do not deepcopy
    teacher_heads.load_state_dict(heads.state_dict())
    teacher = copy.deepcopy(student)
    for p in [*teacher.parameters(), *teacher_heads.parameters()]:
        p.requires_grad_(False)
    tensors = torch.load(args.tensors, weights_only=True)

    def features(model):
        model.eval()
        with torch.no_grad():
            out = [embed(model, tensors[k]) for k in ("train_x", "val_x")]
        model.train()
        return out

    result = dict(zip(("before_train", "before_val"), features(teacher), strict=True))
    transform = DINOTransform(
        global_crop_size=d["img"],
        global_crop_scale=tuple(d["global_scale"]),
        local_crop_size=d["local"],
        local_crop_scale=tuple(d["local_scale"]),
        n_local_views=d["n_local"],
    )
    data = torchvision.datasets.ImageFolder(args.train_dir, transform=transform)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=d["batch"],
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    dino_loss, ibot_loss, koleo_loss = (
        DINOLoss(output_dim=d["out_dim"]),
        IBOTPatchLoss(output_dim=d["out_dim"]),
        KoLeoLoss(),
    )
    params = [*student.parameters(), *heads.parameters()]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=d["lr"])
    grid = d["img"] // d["patch"]
    step, start = 0, time.perf_counter()
    while step < args.steps:
        for views, _ in loader:
            if step >= args.steps:
                break
            lr = cosine(step, args.steps, d["lr"], d["min_lr"], warmup=min(d["warmup"], args.steps))
            wd = cosine(step, args.steps, *d["wd"])
            opt.param_groups[0].update(lr=lr, weight_decay=wd)
            opt.param_groups[1].update(lr=lr)
            (t0, t1), warm = d["teacher_temp"], d["teacher_temp_warmup"]
            t_temp = t0 + (t1 - t0) * min(step / warm, 1.0)  # linear warmup, as fastvit's teacher_temp_schedule
            g = torch.cat(views[:2])
            B = len(g)
            mask = g.new_zeros((B, 1 + grid * grid), dtype=torch.bool)
            block = random_block_mask(size=(B, grid, grid), max_num_masks_per_block=grid * grid // 2, device=g.device)
            mask[:, 1:] = block.flatten(1)
            with torch.no_grad():
                t_tokens = teacher.encode(g)
                t_cls = teacher_heads["dino"](t_tokens[:, 0])
                t_masked = teacher_heads["ibot"](t_tokens[mask])
            s_tokens = student.encode(g, mask=mask)
            s_cls_g = s_tokens[:, 0]
            s_local = student.encode(torch.cat(views[2:]))[:, 0]
            s_cls = torch.cat([heads["dino"](s_cls_g), heads["dino"](s_local)])
            loss = dino_loss(t_cls.chunk(2), s_cls.chunk(len(views)), teacher_temp=t_temp)
            loss = loss + ibot_loss(t_masked, heads["ibot"](s_tokens[mask]), block, teacher_temp=t_temp)
            loss = loss + d["koleo"] * sum(koleo_loss(c) for c in s_cls_g.chunk(2))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, d["clip"])
            if step < d["freeze_last"]:
                for h in heads.values():
                    for p in h.last_layer.parameters():
                        p.grad = None
            opt.step()
            m = cosine(step, args.steps, *d["momentum"])
            update_momentum(student, teacher, m)
            update_momentum(heads, teacher_heads, m)
            step += 1
            if step % 10 == 0 or step == args.steps:
                print(f"lightly step={step} loss={loss.item():.4f} lr={lr:.3g}", flush=True)
    result["seconds"] = time.perf_counter() - start
    result.update(dict(zip(("after_train", "after_val"), features(teacher), strict=True)))
    torch.save(result, args.result)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", default=sys.executable, help="interpreter with lightly, timm and torchvision")
    p.add_argument("--data", default="builtin", help="builtin or imagefolder:TRAIN (class sub-folders)")
    p.add_argument("--val", default="", help="imagefolder:VAL (with --data imagefolder:...)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seeds", type=int, default=1, help="runs per side (train.seed 0 .. N-1): mean and spread")
    p.add_argument("--out", default="parity")
    p.add_argument("--eval-images", type=int, default=2000, help="per split, seeded and class-balanced (0: all)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the lightly side")
    p.add_argument("--smoke", action="store_true", help="a few steps on a few images (CI)")
    p.add_argument("--lightly-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--train-dir", help=argparse.SUPPRESS)
    p.add_argument("--tensors", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--hparams", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # recipe_hparams() of the driver, as JSON
    args, rest = p.parse_known_args(argv)
    if args.lightly_worker:
        lightly_worker(args)
        return 0
    bad = [a for a in rest if "=" not in a or a.startswith("-")]
    if bad:
        p.error(f"unknown arguments {bad}; fastvit overrides are key=value")
    driver(args, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
