"""``python -m function.model [HANDLE]``: fill the model cache with the ``.tflite`` LiteRT serves.

A TF Hub module or SavedModel is converted (TensorFlow needed); a ``.tflite`` URL is downloaded.
Options override :class:`~function.config.Config`. The image's build stage runs it; so does the CLI,
detached, to convert for its next run (``--idle``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..config import Config, ConfigError
from ..errors import ModelError, TensorFlowMissing
from ..infra import procs
from . import handles
from .cache import ConvertedCache, fetch_tflite, write_atomic


def main(argv: list[str] | None = None, config: Config | None = None) -> int:
    try:
        config = config or Config.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog="python -m function.model",
        description="Convert a TF Hub module (or TF2 SavedModel) to a float32 .tflite for the LiteRT runtime, "
                    "into the model cache.")
    parser.add_argument("handle", nargs="?", default=config.model_url,
                        help=f"TF Hub handle, URL or local path (default: MODEL_URL, {config.model_url})")
    parser.add_argument("--out", help="also copy the .tflite here (and its manifest beside it, + .json)")
    parser.add_argument("--cache-dir", default=config.model_cache_dir,
                        help=f"the model cache (default: MODEL_CACHE_DIR, {config.model_cache_dir})")
    parser.add_argument("--verbose", action="store_true", help="let TensorFlow's own output through")
    parser.add_argument("--idle", action="store_true",
                        help="run only on CPU time nobody else wants (SCHED_IDLE), not slowing other runs down")
    parser.add_argument("--module-from", type=int, default=None, metavar="PID",
                        help="process PID is downloading the module into tensorflow_hub's cache: use its download")
    args = parser.parse_args(argv)
    if args.idle:
        procs.run_when_idle()
    cache = ConvertedCache(args.cache_dir)
    started = time.perf_counter()
    try:
        if handles.is_tflite(args.handle):
            path = fetch_tflite(args.handle, args.cache_dir)
        else:
            from .convert import cached  # numpy here; TensorFlow only once a conversion starts

            path = cached(cache, args.handle, quiet=not args.verbose, downloader=args.module_from)
        manifest = cache.manifest(args.handle) or {}
    except (ModelError, FileNotFoundError) as exc:
        output = getattr(exc, "output", "")
        if output and not isinstance(exc, TensorFlowMissing):
            print(f"TensorFlow's output (tail):\n{output.rstrip()}", file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, path.read_bytes())
        if manifest:
            write_atomic(out.with_name(out.name + ".json"), (json.dumps(manifest, indent=2) + "\n").encode())
        print(f"cached:  {path}")
        path = out
    size = path.stat().st_size
    print(f"model:   {path}")
    print(f"source:  {args.handle}")
    print(f"size:    {size} bytes ({size / 1e6:.1f} MB)")
    if "max_abs_diff" in manifest:
        print(f"max |TensorFlow - LiteRT| on {manifest.get('compared_on', 'fixed inputs')}: "
              f"{manifest['max_abs_diff']:.3g}")
    print(f"took:    {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
