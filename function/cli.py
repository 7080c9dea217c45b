"""``python main.py [PHOTO ...]``: classify photo URLs or local files and print the top species."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from .app import App
from .config import MODEL_RUNTIMES, Config
from .core.results import Classification
from .core.sources import PhotoSource
from .errors import ConfigError, NotReady
from .infra import logs

# The task's own photos: a cormorant, a crested lark, a motmot, a toucanet and a robin.
DEFAULT_PHOTOS = (
    "https://upload.wikimedia.org/wikipedia/commons/c/c8/Phalacrocorax_varius_-Waikawa%2C_Marlborough%2C_New_Zealand-8.jpg",
    "https://quiz.natureid.no/bird/db_media/eBook/679edc606d9a363f775dabf0497d31de8c3d7060.jpg",
    "https://upload.wikimedia.org/wikipedia/commons/8/81/Eumomota_superciliosa.jpg",
    "https://i.pinimg.com/originals/f3/fb/92/f3fb92afce5ddff09a7370d90d021225.jpg",
    "https://cdn.britannica.com/77/189277-004-0A3BC3D4.jpg",
)

EXAMPLE = """examples:
  python main.py                                  classify the five default photos
  python main.py https://example.org/robin.jpg    classify one photo URL
  python main.py photos/*.jpg --top-k 5 --json    local files, five species each, as JSON
  python main.py --from urls.txt                  the URLs or paths listed in a file, one a line
  find photos -name '*.jpg' | python main.py -    ... or given on standard input
  python main.py photos/*.jpg --write-results     ... and write photos/NAME.jpg.json beside each

output: for each photo, its name, then one line per species (rank, species, score; the common name
first with COMMON_NAMES_URL), preceded by "no bird recognised" when the model's best class is its
background or scores under its threshold; or one line "error CODE: what went wrong" when it failed;
then the count and the total time. A progress bar runs on stderr while more than a few photos are
fetched, if stderr is a terminal.
exit status: 0 when every photo was classified, 1 when any failed, 2 on bad usage.
environment: MODEL_URL, MODEL_RUNTIME, MODEL_CACHE_DIR, LABELS_URL, COMMON_NAMES_URL, SCORE_THRESHOLD, TOP_K,
TFHUB_CACHE_DIR and more (see README.md)."""
PROGRESS_MIN_PHOTOS = 4  # fewer than this come back before a bar would be worth drawing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python main.py", description="Name the bird species in photos with Google's AIY birds model.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="*", metavar="PHOTO",
                        help="photo URL (http/https) or local file; - reads more of them from standard "
                             "input, one a line; default: the five demo photos")
    parser.add_argument("--from", dest="lists", action="append", default=[], metavar="FILE",
                        help="also classify the URLs or paths listed in FILE, one a line (blank lines and "
                             "# comments skipped; - is standard input); may be repeated")
    parser.add_argument("-k", "--top-k", type=int, default=None, metavar="N",
                        help="how many species to show per photo (default: TOP_K or 3)")
    parser.add_argument("--json", action="store_true",
                        help="print the HTTP API's JSON document (results, errors, timings) instead of a table")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar on stderr, even on a terminal")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        default=None, help="log detail on stderr (default: WARNING)")
    parser.add_argument("--runtime", choices=MODEL_RUNTIMES, type=str.lower, default=None,
                        help="the model's runtime (default: MODEL_RUNTIME or auto: LiteRT on the .tflite converted "
                             "once and cached; tensorflow: the TF Hub module on TensorFlow, the reference)")
    parser.add_argument("--write-results", action="store_true",
                        help="also write each local photo's result document (as RESULTS_URL writes for bucket "
                             "objects) next to it, as PHOTO.json, overwriting an earlier one; not for URLs")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also print where the time went, phase by phase")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # The user's own machine: no SSRF guard; no warm-up call, as one call follows the load at once;
        # one request, the user's, which may use the whole fetch pool.
        config = Config.from_env()
        config = dataclasses.replace(config, ssrf_guard=False, warmup=False,
                                     model_runtime=args.runtime or config.model_runtime,
                                     fetch_per_request=config.fetch_per_request or config.fetch_workers)
    except ConfigError as err:
        parser.error(str(err))
    top_k = args.top_k if args.top_k is not None else config.top_k
    if not 1 <= top_k <= config.max_top_k:
        parser.error(f"--top-k must be from 1 to {config.max_top_k}")
    level = args.log_level or ("INFO" if args.verbose else "WARNING")
    logs.setup(level, json_lines=False, notices=True)
    sources = [PhotoSource.from_argument(p) for p in photo_arguments(args, parser)]
    bar = ProgressBar(sys.stderr) if args.progress and show_progress(sys.stderr, len(sources)) else None
    # A one-shot run waits for a model conversion only when that is shorter: function/model/loader.py.
    app = App(config, quiet_runtime=level != "DEBUG", convert_in_background=True)
    try:
        result = app.classify(sources, top_k, progress=bar)
    except NotReady as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if bar:
            bar.close()
        app.stop()
    if args.write_results:
        try:
            written = app.write_beside_files(result)
        except OSError as exc:
            print(f"error: could not write a result document: {exc}", file=sys.stderr)
            return 1
        urls = sum(r.source.kind != "path" for r in result.results)
        if urls:
            print(f"note: {urls} photo URL(s) have no folder to write a result document to", file=sys.stderr)
        logging.getLogger(__name__).info("%d result document(s) written", len(written))
    total_s = time.perf_counter() - started
    if args.json:
        doc = result.to_dict()
        doc["timings_ms"]["wall"] = round(total_s * 1000, 1)
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        print_table(result, out)
        out.write(f"\n{len(sources)} photo(s), {result.failed} failed, in {total_s:.2f} s "
                  "(model download and load, photo downloads and inference included)\n")
        if args.verbose:
            out.write("where the time went (ms; fetch is the slowest photo, decode the sum):\n")
            for name, ms in result.timings_ms.items():
                out.write(f"    {name:<16}{ms:10.1f}\n")
    return 1 if result.failed else 0


def run() -> NoReturn:
    """:func:`main`, then an exit that skips the interpreter's teardown, slow with TensorFlow loaded;
    the app is stopped and the logs and streams flushed first."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more can be said
            stream.flush()
    os._exit(code)


def photo_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The photos in the order given: arguments (``-`` expanded from stdin in place), then --from lists."""
    if not args.photos and not args.lists:
        return list(DEFAULT_PHOTOS)
    photos: list[str] = []
    for item in args.photos:
        photos.extend(read_list("-", parser) if item == "-" else [item])
    for name in args.lists:
        photos.extend(read_list(name, parser))
    if not photos:
        parser.error("no photos: the lists given are empty")
    return photos


def read_list(name: str, parser: argparse.ArgumentParser) -> list[str]:
    """URLs or paths, one a line; blank lines and ``#`` comments skipped."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"cannot read the list {name}: {getattr(exc, 'strerror', None) or exc}")
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def show_progress(stream: TextIO, photos: int) -> bool:
    try:
        return photos >= PROGRESS_MIN_PHOTOS and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class ProgressBar:
    """``photos  7/12 [##########........]`` on one terminal line, redrawn in place with ``\r``; called
    from the fetching threads, one at a time."""

    WIDTH = 24

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._shown = 0

    def __call__(self, done: int, total: int) -> None:
        filled = self.WIDTH * done // total
        line = f"photos {done:>{len(str(total))}}/{total} [{'#' * filled}{'.' * (self.WIDTH - filled)}]"
        if done == total:
            line += " classifying..."
        self.stream.write("\r" + line.ljust(self._shown))
        self.stream.flush()
        self._shown = len(line)

    def close(self) -> None:
        """Wipe the bar, so the results start on a clean line."""
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0


def print_table(result: Classification, out: TextIO) -> None:
    for n, r in enumerate(result.results, start=1):
        out.write(f"[{n}] {r.source.ref}\n")
        if r.error:
            out.write(f"    error {r.error.code}: {r.error.message}\n")
            continue
        if r.recognised is False:
            out.write("    no bird recognised; the closest classes:\n")
        # The common name first when COMMON_NAMES_URL gives one, the label (the Latin name) beside it.
        names = [f"{p.common_name} ({p.label})" if p.common_name else p.label for p in r.predictions]
        width = max(len(name) for name in names)
        for rank, (p, name) in enumerate(zip(r.predictions, names, strict=True), start=1):
            out.write(f"    {rank}. {name:<{width}}  {p.score:6.1%}\n")
