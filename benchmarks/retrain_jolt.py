"""One correction round on a saved density-shift model, with retrain variations (issue 20: why a distance
model floods after a retrain).

Loads `{models}/{set}-seed{seed}.pt` (saved by `bench_density_shift.py --save-models`), predicts the set's 4
sparsest frames, takes the one it gets most wrong as the corrected frame (its whole truth, reviewed), and runs
the product's retrain (`segment.retrain.retrain`, replaying the labelled training image) once per variant:

- default: the widget's retrain (50 steps, edits weighing 5, replay 1);
- noreplay, edit1: without replay; edits weighing 1;
- lr0.3: a third of the rate (with the retrain's warm-up);
- stepsN: N steps instead of 50;
- bnonly: lr_scale 0.01 and one step, whose rate is 0 under the warm-up: only batch-norm statistics move;
- distW: the default retrain with the shape head's distance term weighing W instead of 2 (dist0: foreground
  cross-entropy + soft Dice only), to tell whether the distance regression drives the flood; distfg: the
  distance term at its weight 2 but over object pixels only (background's target, 0, left to the foreground map);
- continue: no correction at all: 50 more steps on the labelled training image alone, with the retrain's
  settings (`retrain_finetune_config`): is it the corrected frame, or continuing training itself?

Prints each frame's foreground Dice and predicted/true share before and after, and the retrain's losses.

`--capped PX` tests a distance target that is not normalised per object: each pixel's distance to its object's
edge in pixels, divided by PX and capped at 1, for fine-tuning and retrain alike: the `capped` instance head with
its cap set to PX (the package's is `shape_heads.CAP_PX`). The model is then fine-tuned afresh on the set's densest
image (`bench_density_shift.py`'s settings) instead of loaded.

    NAPARI_TOWER_SHARED=/work/shared python benchmarks/retrain_jolt.py --models models --set dsb2018 --seed 0 \\
        --variants default noreplay edit1 lr0.3 steps1 steps10 bnonly
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_density_shift import fg_dice, load, select
from bench_loop import fg_aligned_previous

from napari_tower.config import PredictConfig, RetrainConfig
from napari_tower.data import from_array
from napari_tower.segment import Predictor
from napari_tower.segment.retrain import retrain


def variant_config(name: str, seed: int) -> RetrainConfig:
    kw: dict = {"seed": seed * 1000 + 1, "device": "cpu", "replay": 1.0}
    if name == "noreplay":
        kw["replay"] = 0.0
    elif name == "edit1":
        kw["edit_weight"] = 1.0
    elif name == "lr0.3":
        kw["lr_scale"] = 0.3
    elif name.startswith("steps"):
        kw["steps"] = int(name[5:])
    elif name == "bnonly":
        kw["lr_scale"], kw["steps"] = 0.01, 1
    elif name != "default" and not name.startswith("dist"):
        raise SystemExit(f"unknown variant {name}")
    return RetrainConfig(**kw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--set", default="dsb2018")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=["default"])
    parser.add_argument("--capped", type=float, default=None, help="distance target in pixels / PX, capped at 1")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dense, sparse = select(args.set, 4)
    image, mask = load(args.set, dense)
    if args.capped:
        from napari_tower.config import FinetuneConfig
        from napari_tower.segment import finetune
        from napari_tower.segment.shape_heads import CappedDistanceHead

        CappedDistanceHead.cap_px = args.capped
        cfg = FinetuneConfig(seed=args.seed, device="cpu", instance_head="capped")
        ckpt = finetune([from_array(image, dense)], [mask[None]], cfg).checkpoint
    else:
        ckpt = torch.load(args.models / f"{args.set}-seed{args.seed}.pt", weights_only=False)
    pcfg = PredictConfig(device="cpu")
    frames = {s: load(args.set, s) for s in sparse}

    def score(model) -> dict:
        predictor = Predictor(model, pcfg)
        out = {}
        for stem, (im, truth) in frames.items():
            pred = predictor.predict(from_array(im, stem)).labels[0]
            out[stem] = (round(fg_dice(pred, truth), 3), round(float((pred > 0).mean() / (truth > 0).mean()), 2))
        return out

    before = score(ckpt)
    worst = max(sparse, key=lambda s: 1 - before[s][0])
    others = [s for s in sparse if s != worst]
    print(f"before: {before}; corrected frame {worst}", flush=True)
    im, truth = frames[worst]
    frame = from_array(im, worst)
    previous = fg_aligned_previous(Predictor(ckpt, pcfg).predict(frame).labels[0], truth.astype(np.int32))
    for name in args.variants:
        if name == "continue":
            from napari_tower.segment import finetune
            from napari_tower.segment.retrain import retrain_finetune_config

            cfg = retrain_finetune_config(ckpt, variant_config("default", args.seed))
            model = finetune([from_array(image, dense)], [mask[None]], cfg, init=ckpt).checkpoint
            after = score(model)
            print(f"continue: others' Dice {np.mean([before[s][0] for s in others]):.3f} -> "
                  f"{np.mean([after[s][0] for s in others]):.3f}; every frame {after}", flush=True)
            continue
        if name.startswith("dist"):
            import torch.nn.functional as F

            from napari_tower.segment import shape_heads
            from napari_tower.segment.losses import segmentation_loss

            weight = 2.0 if name == "distfg" else float(name[4:])

            def reweighted_loss(self, logits, targets, weights, w=weight, inside=name == "distfg"):  # as .loss
                logits = logits.float()
                fg = targets[:, 0]
                classes = torch.where(weights > 0, fg.long() + 1, torch.zeros_like(fg, dtype=torch.long))
                dist = F.binary_cross_entropy_with_logits(logits[:, 2], targets[:, 1], reduction="none")
                dw = weights * fg if inside else weights
                return (segmentation_loss(logits[:, :2], classes, weights)
                        + w * (dist * dw).sum() / dw.sum().clamp(min=1.0))

            original, shape_heads.InstanceHead.loss = shape_heads.InstanceHead.loss, reweighted_loss
        result = retrain(ckpt, frame, previous[None], truth.astype(np.int32)[None], variant_config(name, args.seed),
                         predict_cfg=pcfg, reviewed=np.ones((1, *truth.shape), np.uint8),
                         replay=[(from_array(image, dense), mask[None])])
        if name.startswith("dist"):
            shape_heads.InstanceHead.loss = original
        after = score(result.model)
        losses = [round(x, 3) for x in result.model.history.get("loss", [])]
        print(f"{name}: others' Dice {np.mean([before[s][0] for s in others]):.3f} -> "
              f"{np.mean([after[s][0] for s in others]):.3f}; corrected frame {before[worst]} -> {after[worst]}; "
              f"every frame {after}; losses {losses[:3]} .. {losses[-3:]}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
