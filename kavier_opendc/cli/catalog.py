"""``kavier catalog``: print the models, GPUs and serving frameworks the simulator knows (inputs A and B);
``kavier catalog import CONFIG``: a model's catalogue entry from its HuggingFace config.json."""

from __future__ import annotations

import sys
from pathlib import Path

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.cli.args import catalog_with
from kavier_opendc.cli.commands import HELP


def cmd_import(args) -> int:
    from kavier_opendc.specs import hf_import

    cfg, path = hf_import.read_config(args.config)
    name = args.name or hf_import.default_name(cfg, path, Path(args.config))
    if not name:
        raise KavierInputError("the config names no model ('_name_or_path')", source=str(path), expected="--name NAME")
    source = args.source or str(path.resolve())
    entry = hf_import.entry_from_config(cfg, name, source, origin=str(path))
    print(hf_import.describe(entry), file=sys.stderr)
    if "the config states num_parameters" in entry.get("notes", ""):
        print(f"kavier: warning: {entry['notes'].split(': check the entry')[0]}: check the entry", file=sys.stderr)
    if args.out:
        action = hf_import.write_entry(entry, Path(args.out), overwrite=args.overwrite)
        print(f"{action} model {entry['name']!r} in {args.out} (use it with --catalog {args.out})", file=sys.stderr)
    else:
        sys.stdout.write(hf_import.to_yaml([entry]))
    return 0


def cmd_catalog(args) -> int:
    if args.what == "import":
        if not args.config:
            raise KavierInputError(
                "kavier catalog import needs a config.json (or a folder holding one)",
                expected="kavier catalog import CONFIG [--name NAME] [--out FILE]",
            )
        return cmd_import(args)
    if args.config:
        raise KavierInputError(
            f"unexpected argument {args.config!r} after 'kavier catalog {args.what}'",
            expected="kavier catalog [models|gpus|frameworks|all], or kavier catalog import CONFIG",
        )
    for opt in ("name", "out", "source"):
        if getattr(args, opt):
            raise KavierInputError(f"--{opt} is an option of 'kavier catalog import'")
    cat = catalog_with(args.catalog)
    if args.what in ("models", "all"):
        print("Models (layers, hidden, heads/kv, params, dtype):")
        for m in cat.models():
            print(
                f"  {m.name:<18} {m.num_layers:>3} {m.hidden_size:>6} {m.num_attention_heads:>3}/"
                f"{m.num_kv_heads:<3} {m.total_params / 1e9:7.2f}B {m.dtype}"
            )
    if args.what in ("gpus", "all"):
        print("GPUs (dense FP16 TFLOP/s, GB/s, GiB, idle-max W, $/h):")
        for g in cat.gpus():
            print(
                f"  {g.name:<10} {g.peak_fp16_tflops:8.1f} {g.mem_bandwidth_gbs:7.0f} {g.memory_gib:5.0f} "
                f"{g.idle_power_w:4.0f}-{g.max_power_w:<5.0f} {g.price_per_hour:5.2f}"
            )
    if args.what in ("frameworks", "all"):
        print(
            "Serving frameworks (--framework NAME, or ENGINE@VERSION[:PATH] for the one covering that version; "
            "scheduler rules, serving path, step overhead, versions covered):"
        )
        width = max(len(n) for n in cat.frameworks())
        for fw in cat.frameworks().values():
            table = fw.step_overhead
            wildcard = " + '*'" if table is not None and ("*", "*") in table else ""
            over = (
                "the GPU profile's"
                if table is None
                else f"{sum(1 for g, _ in table if g != '*')} GPU/TP entries{wildcard}"
            )
            covers = f"{fw.engine}{fw.covers}" if fw.covers else "by name only"
            print(f"  {fw.name:<{width}} {fw.policy:<8} {fw.serving_path:<8} {over:<22} {covers:<24} {fw.versions}")
    return 0


def register(sub) -> None:
    c = sub.add_parser("catalog", help=HELP["catalog"])
    c.add_argument(
        "what",
        nargs="?",
        choices=["models", "gpus", "frameworks", "all", "import"],
        default="all",
        help="what to list: models, gpus, frameworks or all (default all); or 'import CONFIG': a "
        "model's catalogue entry from its HuggingFace config.json (no network)",
    )
    c.add_argument(
        "config", nargs="?", metavar="CONFIG", help="import: a HuggingFace config.json, or a model folder holding one"
    )
    c.add_argument("--catalog", action="append", metavar="FILE", help="extra catalogue file; repeatable")
    c.add_argument(
        "--name",
        help="import: the model's catalogue name (default: the config's _name_or_path, else the folder's name)",
    )
    c.add_argument(
        "--out",
        metavar="FILE",
        help="import: the catalogue file (.yaml/.yml/.json) to add the entry "
        "to, created if missing, written atomically (an existing YAML file is rewritten without its "
        "comments); default: print the entry on stdout",
    )
    c.add_argument(
        "--overwrite", action="store_true", help="import: replace an entry of the same name in --out (else refused)"
    )
    c.add_argument("--source", help="import: the entry's source text, e.g. the config's URL (default: its path)")
    c.set_defaults(func=cmd_catalog)
