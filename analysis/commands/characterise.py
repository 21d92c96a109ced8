"""``python -m analysis characterise``: network and behavioural profile of any MNI peaks.

Example::

    python -m analysis characterise --seeds "0,48,0;60,-14,-12" --out profile

writes ``maps/``, ``tables/`` and ``figures/`` (Figure 3/4-style) under ``--out``. Without
``--rsfc-dir`` the connectivity half is the HCP parcel-level substitute (cortex only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.config import load_config

EPILOG = """\
examples:
  python -m analysis characterise --seeds "0,48,0;60,-14,-12" --out profile
  python -m analysis characterise --seeds "0,48,0" --directions decrease --no-decode --out out
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", required=True,
                   help='MNI peaks "x,y,z;x,y,z" (ids S1, S2, ... in this order)')
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--directions", default="",
                   help='optional "increase,increase,decrease,..." (one per seed) for the '
                        "overlap panels")
    p.add_argument("--rsfc-dir", type=Path, default=None,
                   help="folder of user-supplied rs-FC r maps named ..._<x>_<y>_<z>.nii.gz")
    p.add_argument("--no-decode", action="store_true", help="skip the behavioural decoding")
    p.add_argument("--voxel-level", action="store_true",
                   help="also the voxel-level BAT variant (531 term maps; minutes)")


def run_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from analysis.characterisation.core import characterise, parse_seeds, write_tables
    from analysis.figures import figure3, figure4
    from analysis.sdm.errors import DataError

    cfg = load_config()["characterisation"]
    seeds = parse_seeds(args.seeds)
    if args.directions:
        dirs = [d.strip().lower() for d in args.directions.split(",")]
        if len(dirs) != len(seeds) or not set(dirs) <= {"increase", "decrease", ""}:
            raise DataError("--directions", f"need {len(seeds)} values of increase/decrease")
        seeds = [replace(s, direction=d) for s, d in zip(seeds, dirs, strict=True)]
    out_dir = Path(args.out)

    def out(rel: str) -> Path:
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    res = characterise(seeds, cfg, out, "cli", rsfc_dir=args.rsfc_dir,
                       decode=not args.no_decode, voxel_level=args.voxel_level or None)
    write_tables([res], out)
    substitute = any(r == "hcp_substitute" for r in res["seeds"]["rsfc_source"])
    figure3.draw(res["panels"], out("figures/figure3.png"), out("figures/figure3.svg"),
                 "command-line seeds", substitute=substitute)
    if not args.no_decode:
        figure4.draw(res["terms"], seeds, out("figures/figure4.png"), out("figures/figure4.svg"),
                     "command-line seeds")
    for row in res["seeds"].itertuples():
        print(f"{row.seed} ({row.x:g}, {row.y:g}, {row.z:g}): {row.n_studies_6mm} studies "
              f"within 6 mm; MACM {row.macm_voxels_positive} voxels; rs-FC {row.rsfc_source}; "
              f"{row.network_map} {row.network_map_voxels} voxels")
    print(f"written to {out_dir}")
    return 0
