"""`emoforge bench NAME`: one module per benchmark, each with `run(...) -> dict` (JSON-ready);
what each takes as FILES and which `emoforge bench` option reaches which `run` parameter."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.spec import SpecError, scan_inputs
from pipeline.media import MediaError, probe

# bench name: its module
BENCHES = {
    "scenes": "jobs.bench.scenes",
    "memory": "jobs.bench.memory",
    "faces": "jobs.bench.faces",
    "sync": "jobs.bench.sync",
    "expression": "jobs.bench.expression",
    "report": "jobs.bench.report",
    "train": "jobs.bench.train",
    "generate": "jobs.bench.generate",
    "learn": "jobs.bench.learn",
    "denoise": "jobs.bench.denoise",
    "pipeline": "jobs.bench.pipeline",
    "scale": "jobs.bench.scale",
    "simulate": "jobs.bench.simulate",
    "persons": "jobs.bench.persons",
}
# what FILES are for the benches that take them: "videos" (files or folders, expanded as
# `curate` expands them), "catalogs", "checkpoints"; the others generate their own inputs
FILES = {"scenes": "videos", "memory": "videos", "faces": "videos", "pipeline": "videos",
         "scale": "videos", "report": "catalogs", "train": "catalogs", "denoise": "checkpoints"}


class BenchInputError(ValueError):
    """A bench input that yields no content (exit 2): the message names it."""


@dataclass(frozen=True)
class Option:
    """An `emoforge bench` option and the `run` parameter it sets in the benches named."""

    flag: str
    param: str
    benches: tuple[str, ...]
    help: str
    type: type | None = None  # None: a switch that sets `value`
    many: bool = False  # several values (a list; a tuple where the parameter is a tuple)
    value: object = None  # a switch's value
    repeat: bool = False  # repeatable (each use adds one value)

    @property
    def dest(self) -> str:
        """The argparse attribute (from the flag: `--batch-size` is `bench_batch_size`)."""
        return "bench_" + self.flag.lstrip("-").replace("-", "_")

    def argparse_kwargs(self) -> dict:
        common = {"dest": self.dest, "default": None,
                  "help": f"{self.help} (bench {', '.join(self.benches)})"}
        if self.type is None:
            return {**common, "action": "store_const", "const": self.value}
        metavar = self.flag.lstrip("-").replace("-", "_").upper()
        if self.repeat:
            return {**common, "action": "append", "type": self.type, "metavar": metavar}
        return {**common, "type": self.type, "nargs": "+" if self.many else None,
                "metavar": metavar}


OPTIONS = (
    Option("--seconds", "seconds", ("pipeline",), "length of the generated input (default 20)",
           float),
    Option("--videos", "videos", ("persons",),
           "input videos of the generated catalog (default 35,550: about 100,000 tracks)", int),
    Option("--minutes", "minutes", ("learn",), "a cap on the training time (default 60)", float),
    Option("--repeats", "repeats", ("faces", "scale"),
           "runs per configuration, the fastest compared", int),
    Option("--steps", "steps", ("generate", "learn", "train"),
           "DDIM steps (generate: one or more) or training steps", int, many=True),
    Option("--batch-size", "batch_size", ("train",), "batch size (default 2)", int),
    Option("--tracks", "tracks", ("train",), "the dataset index's memory on a synthetic catalog "
           "of this many 10 s tracks (instead of the step against the loader)", int),
    Option("--max-steps", "max_steps", ("learn",), "training steps (default 2300)", int),
    Option("--seed", "seed", ("learn",), "training seed (default: the config's, 0)", int),
    Option("--identities", "identities", ("learn",), "identities in the corpus (default 4)", int),
    Option("--sentences", "sentences", ("learn",), "sentences per identity (default 4)", int),
    Option("--workdir", "out", ("learn", "scale"), "folder for the catalogs and runs", str),
    Option("--backend", "backend_name", ("faces",), "face detector backend (default mediapipe)",
           str),
    Option("--expression-backend", "expression_backend", ("expression",),
           "expression backend (default: the analyzer's, blendshapes)", str),
    Option("--emotion-backends", "emotion_backends", ("expression",),
           "emotion backends compared", str, many=True),
    Option("--clips-per-set", "clips_per_set", ("sync",), "clips per test set (default 16)", int),
    Option("--max-photos", "max_photos", ("sync",), "face photos used (default 5)", int),
    Option("--no-real", "real", ("sync",), "generated clips only, without the real videos",
           value=False),
    Option("--no-ray", "ray", ("pipeline",), "the decode floor and the stages without Ray only",
           value=False),
    Option("--no-fresh-training", "fresh_training", ("learn",),
           "resume the training run in the work folder instead of starting afresh", value=False),
    Option("--emotion-strides", "emotion_strides", ("pipeline",),
           "accuracy of the emotion strides on real face tracks instead", value=True),
    Option("--set", "overrides", ("pipeline",), "a job override (repeatable)", str, repeat=True),
    Option("--compare", "compare", ("pipeline",),
           "an override of a second configuration, run without Ray first (repeatable)", str,
           repeat=True),
)


def video_inputs(items: list[str]) -> list[str]:
    """Video files from `items` (files or folders, expanded as `curate` expands them), each one
    probed: an item that yields no video (a folder without one, a file without a decodable video
    stream) is a BenchInputError naming it."""
    files: list[str] = []
    for item in items:
        try:
            found, ignored = scan_inputs([item])
        except SpecError as exc:
            raise BenchInputError(str(exc)) from None
        if not found:
            skipped = f" (ignored: {ignored})" if ignored else ""
            raise BenchInputError(f"input {item} holds no video files{skipped}")
        for path in found:
            try:
                if probe(path)["duration_s"] <= 0:
                    raise MediaError(f"{path}: video stream has no duration")
            except MediaError as exc:
                raise BenchInputError(f"input {path} yields no video: {exc}") from None
        files += found
    return files
