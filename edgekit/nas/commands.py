"""``edgekit nas search``: argument set-up and the command (called from ``edgekit.cli``)."""
from __future__ import annotations

import argparse
import json

from rich.console import Console

__all__ = ["add_nas_commands"]


def cmd_nas_search(args: argparse.Namespace, out: Console) -> int:
    from ..lut.lut import load_lut
    from ..lut.space import SPACES
    from .dnas import DnasConfig, save_spec, search

    lut = load_lut(args.lut, format=args.format, precision=args.precision, threads=args.threads)
    if lut.space.get("name") != args.space:
        raise ValueError(f"{args.lut} is a LUT of space {lut.space.get('name')!r}, not {args.space!r}")
    space = SPACES[args.space].from_dict(lut.space)
    config = DnasConfig(epochs=args.epochs, warmup_epochs=min(args.warmup_epochs, args.epochs - 1),
                        batch_size=args.batch_size, limit=args.limit, target_ms=args.target_ms, seed=args.seed,
                        theta_lr=args.theta_lr)

    def progress(rec: dict) -> None:
        if not args.json:
            out.print(f"epoch {rec['epoch']}: tau {rec['tau']:.3f}  beta {rec['beta']:.3g}  w loss {rec['w_loss']:.3f}  "
                      f"E[LAT] {rec['expected_ms']:.4f} ms  argmax {rec['argmax_ms']:.4f} ms  "
                      f"({rec['seconds']:.0f} s)", highlight=False)

    result = search(space, lut, data=args.data, config=config, progress=progress)
    save_spec(result, args.out)
    if args.json:
        print(json.dumps({"out": str(args.out), **result.to_dict()}, indent=2))
        return 0
    p = result.prediction
    fitted = "" if p.fitted_ms is None else f", {p.fitted_ms:.4f} ms with the overhead model"
    out.print(f"wrote {args.out}: predicted {p.plain_ms:.4f} ms (LUT sum{fitted}); space spans "
              f"{result.fastest_ms:.4f}-{result.slowest_ms:.4f} ms", highlight=False, soft_wrap=True)
    out.print("choices: " + " ".join(result.choices), markup=False, highlight=False, soft_wrap=True)
    for note in result.notes:
        out.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    return 0


def add_nas_commands(sub: argparse._SubParsersAction) -> None:
    nas = sub.add_parser("nas", help="hardware-aware architecture search")
    nsub = nas.add_subparsers(dest="nas_command", required=True)
    p = nsub.add_parser("search", help="FBNet v1 DNAS over a space with a LUT; writes the searched ArchSpec")
    p.add_argument("--space", default="fbnet-v1")
    p.add_argument("--lut", required=True, help="LUT JSON of the space (its knobs set the space's scale)")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, a directory of IDX files or class folders")
    p.add_argument("--target-ms", type=float, help="latency target (LUT plain sum); none = the paper's fixed beta")
    p.add_argument("--out", required=True, help="ArchSpec JSON to write")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=4000, help="training images (80 %% weights, 20 %% architecture)")
    p.add_argument("--theta-lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", help="refuse the LUT unless it is this format")
    p.add_argument("--precision", help="refuse the LUT unless it is this precision")
    p.add_argument("--threads", type=int, help="refuse the LUT unless it used this many threads")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nas_search)
