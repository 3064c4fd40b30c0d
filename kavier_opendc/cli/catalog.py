"""``kavier catalog``: print the models, GPUs and serving frameworks the simulator knows (inputs A and B)."""

from __future__ import annotations

from kavier_opendc.cli.args import catalog_with
from kavier_opendc.cli.commands import HELP


def cmd_catalog(args) -> int:
    cat = catalog_with(args.catalog)
    if args.what in ("models", "all"):
        print("Models (layers, hidden, heads/kv, params, dtype):")
        for m in cat.models():
            print(f"  {m.name:<18} {m.num_layers:>3} {m.hidden_size:>6} {m.num_attention_heads:>3}/"
                  f"{m.num_kv_heads:<3} {m.total_params / 1e9:7.2f}B {m.dtype}")
    if args.what in ("gpus", "all"):
        print("GPUs (dense FP16 TFLOP/s, GB/s, GiB, idle-max W, $/h):")
        for g in cat.gpus():
            print(f"  {g.name:<10} {g.peak_fp16_tflops:8.1f} {g.mem_bandwidth_gbs:7.0f} {g.memory_gib:5.0f} "
                  f"{g.idle_power_w:4.0f}-{g.max_power_w:<5.0f} {g.price_per_hour:5.2f}")
    if args.what in ("frameworks", "all"):
        print("Serving frameworks (--framework; scheduler rules, serving path, step overhead):")
        for fw in cat.frameworks().values():
            table = fw.step_overhead
            wildcard = " + '*'" if table is not None and ("*", "*") in table else ""
            over = ("the GPU profile's" if table is None else
                    f"{sum(1 for g, _ in table if g != '*')} GPU/TP entries{wildcard}")
            print(f"  {fw.name:<20} {fw.policy:<8} {fw.serving_path:<8} {over:<22} {fw.versions}")
    return 0


def register(sub) -> None:
    c = sub.add_parser("catalog", help=HELP["catalog"])
    c.add_argument("what", nargs="?", choices=["models", "gpus", "frameworks", "all"], default="all",
                   help="what to list: models, gpus, frameworks or all (default all)")
    c.add_argument("--catalog", action="append", metavar="FILE", help="extra catalogue file; repeatable")
    c.set_defaults(func=cmd_catalog)
