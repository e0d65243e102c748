"""``afm-ray configs list|show``: the configs afm-ray ships (presets), to use by name or copy."""

from __future__ import annotations

import argparse

from afm_ray.presets import KIND_FOLDERS

DESCRIPTION = """\
The configs afm-ray ships: training recipes (train), the simulator's settings (sim) and sweeps (tune).
Every --config takes a file or one of these names, from any directory; a documented path such as
configs/dsh.yaml or tune/xyz.yaml that does not exist where you run the command is the shipped one.

examples:
  afm-ray configs list
  afm-ray configs show quickstart > my_run.yaml        # copy one, edit it, train with --config my_run.yaml
  afm-ray configs show xyz --kind tune
  afm-ray train --config quickstart run.epochs=1
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("configs", help="list and print the shipped configs (presets)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listed = actions.add_parser("list", help="every shipped config: kind, name and what it is")
    listed.add_argument("--kind", choices=tuple(KIND_FOLDERS), help="only this kind")
    listed.set_defaults(handler=_list)
    shown = actions.add_parser("show", help="print a shipped config (YAML) to copy")
    shown.add_argument("name", help="preset name, e.g. quickstart (afm-ray configs list)")
    shown.add_argument("--kind", choices=tuple(KIND_FOLDERS), help="which kind, where the name has several")
    shown.set_defaults(handler=_show)


def _list(args: argparse.Namespace) -> int:
    from afm_ray.presets import list_presets

    presets = list_presets(args.kind)
    width = max(len(preset.name) for preset in presets)
    for preset in presets:
        print(f"{preset.kind:<5}  {preset.name:<{width}}  {preset.summary}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from afm_ray.presets import get_preset

    print(get_preset(args.name, args.kind).path.read_text(encoding="utf-8"), end="")
    return 0
