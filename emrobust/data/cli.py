"""`emrobust data list | fetch NAME... | verify`: the EM dataset registry from the command line.

The cache is ``$EMROBUST_CACHE`` (default ``~/.cache/emrobust``) and the mirror ``$EMROBUST_DATA_MIRROR``,
as for a cell (``conf/paths/default.yaml``); ``--cache DIR`` / ``--mirror DIR`` override them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from . import registry


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emrobust data", description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=None, help="cache root (default $EMROBUST_CACHE)")
    p.add_argument("--mirror", type=Path, default=None, help="mirror folder (default $EMROBUST_DATA_MIRROR)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every registry entry: name, origin, licence, rows, where it is")
    f = sub.add_parser("fetch", help="copy from the mirror or download, and verify")
    f.add_argument("names", nargs="+", metavar="NAME")
    f.add_argument("--force", action="store_true", help="fetch again even if cached")
    sub.add_parser("verify", help="re-check every cached and mirrored file; exit 1 on any mismatch")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    cache = args.cache or registry.default_cache()
    mirror = args.mirror or registry.default_mirror()
    if args.cmd == "list":
        print(f"{'name':30s} {'origin':7s} {'licence':36s} {'rows':>6s}  status")
        for e in registry.ALL.values():
            rows = str(e.rows) if e.rows is not None else "?"
            print(f"{e.name:30s} {e.origin:7s} {e.licence:36s} {rows:>6s}  {registry.status(e, cache, mirror)}")
        return 0
    if args.cmd == "fetch":
        rc = 0
        for name in args.names:
            try:
                e = registry.get(name, registry.ALL, where="NAME")
                if e.origin == "moem":
                    raise ConfigError(registry._moem_help(e))
                p = registry.fetch(name, cache, mirror, force=args.force)
                print(f"{name}: ok {p}")
            except ConfigError as err:
                print(f"{name}: ERROR {err}")
                rc = 1
        return rc
    results = registry.verify_all(cache, mirror)
    bad = [r for r in results if r[2] != "ok"]
    for name, p, msg in results:
        print(f"{name}: {'ok' if msg == 'ok' else 'MISMATCH'} {p}" + ("" if msg == "ok" else f"\n  {msg}"))
    if not results:
        print("nothing cached or mirrored to verify")
    return 1 if bad else 0
