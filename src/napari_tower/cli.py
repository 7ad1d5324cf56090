"""Command line: `napari-tower pretrain|preview|finetune|predict|evaluate`.

Builds the same config dataclasses as the widget and calls the same core
functions. User errors print one `error: ...` line and exit with status 2;
SIGINT/SIGTERM during training stop at the next step, keep a resumable
checkpoint, and exit with status 130.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .config import METHODS, PROXY_TASKS, DataConfig, FinetuneConfig, ModelConfig, PredictConfig, PretrainConfig
from .errors import TowerError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class ProgressBar:
    """A one-line progress bar on stderr (silent with --quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last_line = -1

    def __call__(self, p) -> None:  # p: train.engine.Progress
        if self.quiet:
            return
        losses = " ".join(f"{k}={v:.4f}" for k, v in p.losses.items())
        width = 24
        filled = int(width * p.step / max(1, p.total))
        line = (f"{p.phase} [{'#' * filled}{'.' * (width - filled)}] {p.step}/{p.total} {losses} "
                f"{p.patches_per_s:.1f} patches/s ETA {p.eta_s:.0f}s" + (f" val={p.val_loss:.4f}" if p.val_loss is not None else ""))
        if self.tty:
            sys.stderr.write("\r" + line[:160].ljust(160) + ("\n" if p.done else ""))
        elif p.done or p.step // max(1, p.total // 20) != self._last_line:
            self._last_line = p.step // max(1, p.total // 20)
            sys.stderr.write(line + "\n")
        if p.done and p.message:
            sys.stderr.write(p.message + "\n")
        sys.stderr.flush()


class StopOnSignal:
    """Turns SIGINT/SIGTERM into a stop flag the training loop checks every step."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None

    def __enter__(self) -> Callable[[], bool]:
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self.event.is_set

    def _handle(self, signum: int, _frame) -> None:
        if self.event.is_set():  # second signal: give up at once
            raise KeyboardInterrupt
        self.signal = signum
        self.event.set()

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _read_images(items: Sequence[str], level: int = 0):
    from .data import expand_inputs, read_image

    return [read_image(p, level=level) for p in expand_inputs(items)]


def _add_common_training(p: argparse.ArgumentParser, steps: int, batch: int) -> None:
    p.add_argument("--steps", type=int, default=steps, help=f"optimiser steps (default {steps})")
    p.add_argument("--patch", type=int, default=DataConfig.patch, help="patch size in pixels (default 128)")
    p.add_argument("--batch", type=int, default=batch, help=f"patches per step (default {batch})")
    p.add_argument("--base", type=int, default=ModelConfig.base, help="U-Net base width (16 on CPU, 32 on GPU)")
    p.add_argument("--depth", type=int, default=ModelConfig.depth, help="U-Net depth (default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-prior", action="store_true", help="sample patches uniformly (switch off the structure prior)")
    p.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="mixed precision on CUDA (float16 adds loss scaling; float32: off); CPU trains in float32")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (slow start, faster long GPU runs)")
    p.add_argument("--level", type=int, default=0, help="resolution level of OME-Zarr or pyramidal TIFF images (0 = full)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-tower", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-tower {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="self-supervised pretraining on unlabelled images")
    p.add_argument("images", nargs="+", help="image files, folders or globs (TIFF, PNG, NPY, zarr)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--method", default="tower", choices=METHODS)
    p.add_argument("--tasks", default=",".join(PretrainConfig.tasks),
                   help=f"TOWER corruptions, comma-separated from {','.join(PROXY_TASKS)} (default nonlinear,masking)")
    p.add_argument("--resume", help="continue this checkpoint's run")
    p.add_argument("--init", help="warm-start the network from this checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=PretrainConfig.checkpoint_every)
    _add_common_training(p, PretrainConfig.steps, PretrainConfig.batch)
    p.set_defaults(steps=None)  # None: the default, or with --resume the interrupted run's own step count

    p = sub.add_parser("preview", help="write each proxy task's corruption of an image")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="folder for the TIFFs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plane", type=int, default=0, help="which plane of a stack (default 0)")

    p = sub.add_parser("demo", help="run the whole chain on the built-in sample (napari, or --headless)")
    p.add_argument("--headless", action="store_true", help="no GUI: pretrain, fine-tune, predict and print metrics")
    p.add_argument("--steps", type=int, default=150, help="pretraining steps (default 150)")
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--out", help="folder for the models (default: a temporary folder)")
    p.add_argument("--quiet", action="store_true")

    from .bench import add_bench_command
    from .segment.cli import add_segment_commands

    add_segment_commands(sub, _add_common_training)
    add_bench_command(sub)
    from .prototypes.cli import add_prototypes_command

    add_prototypes_command(sub)
    from .bioimageio.exporter import add_export_command
    from .device import add_doctor_command

    add_export_command(sub)
    add_doctor_command(sub)
    return parser


def _pretrain_steps(args: argparse.Namespace) -> int:
    """--steps, else the default; when resuming, 0 keeps the interrupted run's total (and so its schedule)."""
    if args.steps is not None:
        return args.steps
    return 0 if args.resume else PretrainConfig.steps


def training_precision(args: argparse.Namespace) -> dict:
    """PretrainConfig/FinetuneConfig keyword arguments for --precision and --compile."""
    from .config import AcceleratorConfig

    mixed = args.precision != "float32"
    return {"mixed_precision": mixed,
            "accel": AcceleratorConfig(amp_dtype=args.precision if mixed else "bfloat16", compile=args.compile)}


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .train import pretrain

    cfg = PretrainConfig(
        method=args.method, steps=_pretrain_steps(args), batch=args.batch, lr=args.lr, seed=args.seed, device=args.device,
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()), checkpoint_every=args.checkpoint_every,
        data=DataConfig(patch=args.patch, structure_prior=not args.no_prior),
        model=ModelConfig(base=args.base, depth=args.depth), **training_precision(args),
    )
    cfg.validate()
    from .model_bundle import check_writable

    out = Path(args.out)
    check_writable(out)
    images = _read_images(args.images, args.level)
    stopper = StopOnSignal()
    with stopper as should_stop:
        result = pretrain(images, cfg, out, ProgressBar(args.quiet), should_stop, args.resume, args.init)
    if result.world_size > 1:  # under torchrun: one line per rank, so a rank that did not train shows
        losses = " ".join(f"{k}={v:.4f}" for k, v in result.last.losses.items())
        print(f"rank {result.rank}/{result.world_size}: {result.last.step} steps, {losses}", file=sys.stderr)
        if result.rank != 0:
            return EXIT_INTERRUPTED if result.last.stopped else 0
    if result.last.stopped:
        again = " ".join(shlex.quote(str(a)) for a in [*args.images, "--out", out, "--resume", out])
        print(f"interrupted at step {result.last.step}; checkpoint kept in {out}; "
              f"continue with: napari-tower pretrain {again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from .data import compute_normalisation, read_image, write_tiff
    from .proxy import preview

    image = read_image(args.image)
    if not 0 <= args.plane < image.shape[0]:
        raise TowerError(f"--plane {args.plane} is out of range: {args.image} has {image.shape[0]} plane(s)")
    norm = compute_normalisation(image.data, image.source)
    plane = norm.apply(__import__("numpy").asarray(image.data[args.plane]))
    out = Path(args.out)
    for name, view in preview(plane, seed=args.seed).items():
        write_tiff(out / f"{name}.tif", view)
    print(json.dumps(sorted(p.name for p in out.glob("*.tif"))))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_gui, run_headless

    if not args.headless:
        return run_gui()
    run_headless(args.steps, args.finetune_steps, args.out, args.quiet)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "pretrain": cmd_pretrain, "preview": cmd_preview, "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .bioimageio.exporter import cmd_export
    from .device import cmd_doctor
    from .bench import cmd_bench
    from .segment.cli import SEGMENT_COMMANDS

    from .prototypes.cli import PROTOTYPE_COMMANDS

    handler = {**COMMANDS, **SEGMENT_COMMANDS, **PROTOTYPE_COMMANDS, "bench": cmd_bench, "export": cmd_export, "doctor": cmd_doctor}[args.command]
    try:
        return handler(args)
    except TowerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if args.debug:
            raise
        name = type(exc).__name__
        from .segment.retry import is_out_of_memory

        if is_out_of_memory(exc):
            print("error: the device ran out of memory: use a smaller --batch, --patch or --tile", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"error: unexpected {name}: {exc} (rerun with --debug for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
