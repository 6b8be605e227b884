"""Evaluation of generated talking-face videos with the pipeline's own backends.

Per clip: lip-sync offset and confidence against the driving audio (av_corr; SyncNet's Sync-C /
Sync-D when its weights are in the model root), identity similarity to a reference photo (dlib;
ArcFace when present), emotion accuracy against a requested label (fer+facex), sharpness,
landmark jitter and head-motion spread. Per set: E-FID (expression vectors of the generated set
against a real set), and FID / FVD when their feature networks are in the model root. Every
number is labelled with the backend that produced it; a clip that cannot be measured is a row
with its reason.

`Evaluator.evaluate_clip` measures one clip (what `bench learn` calls); `evaluate` runs a set and
`markdown_table` renders the result.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from catalog.contract import AUDIO_RATE
from pipeline.models.expression import DEFAULT_EXPRESSION_BACKEND
from pipeline.models.registry import MissingWeightsError
from training.metrics import clip as clip_metrics
from training.metrics.faces import FaceClip, NoFaceError, load_face_clip, reference_embedding
from training.metrics.frechet import frechet_between

log = logging.getLogger(__name__)


class EvaluationInputError(ValueError):
    """A bad input to the whole evaluation (reference without a face, undecodable audio, an
    emotion the classifier does not know): raised before any clip is measured."""


def read_speech(audio: str | Path | np.ndarray) -> np.ndarray:
    """A path (any format the media layer decodes) or float32[N] 16 kHz samples -> float32[N]."""
    if isinstance(audio, np.ndarray):
        return audio.astype(np.float32)
    from pipeline.media import read_audio

    if not Path(audio).is_file():
        raise FileNotFoundError(f"audio file not found: {audio}")
    samples = read_audio(str(audio), AUDIO_RATE, relative_to_video=False)
    if len(samples) == 0:
        raise ValueError(f"{audio}: no audio stream")
    return samples


def read_image(image: str | Path | np.ndarray) -> np.ndarray:
    """A path or uint8[H,W,3] RGB -> uint8[H,W,3] RGB."""
    if isinstance(image, np.ndarray):
        return image
    from PIL import Image

    if not Path(image).is_file():
        raise FileNotFoundError(f"reference image not found: {image}")
    return np.asarray(Image.open(image).convert("RGB"))


def catalog_expression_backend(root: str | Path) -> str:
    """The expression backend a catalog's vectors come from (its manifest's expression stage),
    so E-FID measures in the space the model was trained in."""
    import catalog

    stage = catalog.read_manifest(root).get("stages", {}).get("expression")
    backend = ((stage or {}).get("config") or {}).get("backend")
    if not backend:
        raise EvaluationInputError(f"catalog {root} has no expression stage in its manifest: "
                                   "pass --expression instead")
    return str(backend)


class Evaluator:
    """Loads the backends once and measures clips.

    faces: the face backend (detection + landmarks); identity: "dlib" (+ "arcface" when
    arcface="auto" and its weights are present, or arcface=True to require them); syncnet:
    likewise for SyncNet; emotion and expression: the pipeline's backend names (expression
    None: the analyzer's default; `catalog_expression_backend` gives a catalog's); max_seconds:
    evaluate at most this much of each video; min_face_fraction: a clip whose face is found in
    fewer of its frames fails ("no face"); face_crop: the videos are face crops as the generator
    writes them (the landmarker is also tried on the central face box where nothing is
    detected; its presence score still decides whether a face is there)."""

    def __init__(self, faces: str = "mediapipe", emotion: str = "fer+facex",
                 expression: str | None = None, syncnet: bool | str = "auto",
                 arcface: bool | str = "auto", max_seconds: float | None = 60.0,
                 max_offset_frames: int = 15, min_face_fraction: float = 0.5,
                 face_crop: bool = False) -> None:
        from pipeline.models.faces import load_face_backend
        from pipeline.models.lip_sync import load_lip_sync

        self.backend = load_face_backend(faces, "dlib")
        self.identities = {"dlib": self.backend.identity}
        self.scorers = {"av_corr": load_lip_sync("av_corr", max_offset_frames)}
        self.unavailable: dict[str, str] = {}
        if arcface:
            self._optional("arcface", arcface == "auto", self._load_arcface)
        if syncnet:
            self._optional("syncnet", syncnet == "auto",
                           lambda: self.scorers.__setitem__(
                               "syncnet", load_lip_sync("syncnet", max_offset_frames)))
        self.emotion_name = emotion
        self.expression_name = expression or DEFAULT_EXPRESSION_BACKEND
        self._emotion = self._expression = None
        self.max_seconds = max_seconds
        self.min_face_fraction = min_face_fraction
        self.face_crop = face_crop

    def _load_arcface(self) -> None:
        from pipeline.models.faces import load_identity

        self.identities["arcface"] = load_identity("arcface")

    def _optional(self, name: str, auto: bool, load) -> None:
        try:
            load()
        except (MissingWeightsError, ImportError) as exc:
            if not auto:
                raise
            self.unavailable[name] = str(exc)
            log.info("%s not used: %s", name, exc)

    @property
    def emotion(self):
        if self._emotion is None:
            from pipeline.models.emotion import load_emotion

            self._emotion = load_emotion(self.emotion_name)
        return self._emotion

    @property
    def expression(self):
        if self._expression is None:
            from pipeline.models.expression import load_expression

            self._expression = load_expression(self.expression_name)
        return self._expression

    def references(self, image: str | Path | np.ndarray) -> dict[str, np.ndarray]:
        """Identity embeddings of a reference photo, per identity backend (NoFaceError if none)."""
        img = read_image(image)
        return {name: reference_embedding(img, self.backend, emb)
                for name, emb in self.identities.items()}

    def load(self, video: str | Path, audio: str | Path | np.ndarray | None = None) -> FaceClip:
        return load_face_clip(video, self.backend, None if audio is None else read_speech(audio),
                              self.max_seconds, face_crop=self.face_crop)

    def evaluate_clip(self, video: str | Path, reference: str | Path | np.ndarray | dict | None = None,
                      audio: str | Path | np.ndarray | None = None,
                      mismatched_audio: str | Path | np.ndarray | None = None,
                      emotion: str | None = None, keep: bool = False) -> dict[str, Any]:
        """One clip's row. audio: the driving speech (default: the video's own track);
        mismatched_audio: other speech, scored the same way under "lip_sync_mismatched" (its
        confidence should be clearly lower); reference: a photo, or `references(photo)`;
        keep: also return the FaceClip under "_clip" (for the set metrics).

        Row: video, status ("ok", "partial": some metric has a reason, "failed": nothing
        measurable), reasons, frames, face_frames, lip_sync / lip_sync_mismatched {backend: {...}},
        identity {backend: {...}}, emotion, sharpness, landmark_jitter, head_motion."""
        row: dict[str, Any] = {"video": str(video), "status": "ok", "reasons": []}
        try:
            clip = self.load(video, audio)
        except (NoFaceError, ValueError, FileNotFoundError) as exc:
            return {**row, "status": "failed", "reasons": [str(exc)]}
        except Exception as exc:  # noqa: BLE001 - an undecodable file is a row, not a crash
            log.debug("loading %s failed", video, exc_info=True)
            return {**row, "status": "failed", "reasons": [f"{type(exc).__name__}: {exc}"]}
        row.update(frames=clip.num_frames, face_frames=int(clip.face_frames.sum()))
        if row["face_frames"] < self.min_face_fraction * clip.num_frames:
            missing = clip.num_frames - row["face_frames"]
            return {**row, "status": "failed", "reasons": [
                f"no face in {missing} of {clip.num_frames} frames (a face must be found in at "
                f"least {self.min_face_fraction:.0%}; what was found is likely spurious)"]}
        row["lip_sync"] = {n: clip_metrics.lip_sync(clip, s) for n, s in self.scorers.items()}
        if mismatched_audio is not None:
            other = read_speech(mismatched_audio)
            row["lip_sync_mismatched"] = {n: clip_metrics.lip_sync(clip, s, other)
                                          for n, s in self.scorers.items()}
        if reference is not None:
            refs = reference if isinstance(reference, dict) else self.references(reference)
            row["identity"] = {n: clip_metrics.identity(clip, self.identities[n], e)
                               for n, e in refs.items()}
        if emotion is not None:
            row["emotion"] = clip_metrics.emotion(clip, self.emotion, self.emotion_name, emotion)
        row["sharpness"] = clip_metrics.sharpness(clip)
        row["landmark_jitter"] = clip_metrics.landmark_jitter(clip)
        row["head_motion"] = clip_metrics.head_motion(clip)
        row["reasons"] = _reasons(row)
        row["status"] = "partial" if row["reasons"] else "ok"
        if keep:
            row["_clip"] = clip
        return row


def _reasons(row: dict) -> list[str]:
    out = []
    for key, value in row.items():
        if isinstance(value, dict):
            items = value.items() if "backend" not in value else [(None, value)]
            for sub, metric in items:
                if isinstance(metric, dict) and metric.get("reason"):
                    out.append(f"{key}{'/' + sub if sub else ''}: {metric['reason']}")
    return out


def evaluate(generated: list[str | Path], reference: str | Path | None = None,
             audio: str | Path | None = None, real: list[str | Path] | None = None,
             emotion: str | None = None, evaluator: Evaluator | None = None,
             fid: bool | str = "auto", fvd: bool | str = "auto",
             fid_frames: int = 16, fvd_frames: int = 16, fvd_windows: int = 2,
             device: str = "cpu") -> dict[str, Any]:
    """Rows for every generated video (and every real one, marked "real"), plus the set metrics:
    E-FID (needs `real`), FID and FVD ("auto": when their weights are in the model root) on up to
    `fid_frames` crops and `fvd_windows` windows of `fvd_frames` frames per video, on `device`.
    Returns {"clips": [...], "real": [...], "set": {...}, "summary": {...}, "machine", ...}."""
    start = time.time()
    ev = evaluator or Evaluator()
    refs = None
    result: dict[str, Any] = {"clips": [], "real": [], "set": {}, "unavailable": ev.unavailable}
    try:
        if reference is not None:
            refs = ev.references(reference)
        speech = read_speech(audio) if audio is not None else None
        if emotion is not None:
            clip_metrics.emotion_label(emotion, tuple(ev.emotion.classes))
    except (NoFaceError, ValueError, FileNotFoundError) as exc:
        raise EvaluationInputError(f"{exc} (reference {reference}, audio {audio})") from exc
    gen_clips = []
    for video in generated:
        row = ev.evaluate_clip(video, refs, speech, emotion=emotion, keep=True)
        gen_clips.append(row.pop("_clip", None))
        result["clips"].append(row)
    real_clips = []
    for video in real or []:
        row = ev.evaluate_clip(video, None, None, keep=True)
        real_clips.append(row.pop("_clip", None))
        result["real"].append(row)
    gen_clips = [c for c in gen_clips if c is not None]
    real_clips = [c for c in real_clips if c is not None]
    result["set"] = set_metrics(ev, gen_clips, real_clips, fid, fvd, fid_frames, fvd_frames,
                                fvd_windows, device)
    result["summary"] = summary(result["clips"])
    result["seconds"] = round(time.time() - start, 2)
    result["machine"] = {"platform": platform.platform(), "processor": platform.processor()}
    return result


def set_metrics(ev: Evaluator, gen: list[FaceClip], real: list[FaceClip], fid: bool | str,
                fvd: bool | str, fid_frames: int = 16, fvd_frames: int = 16, fvd_windows: int = 2,
                device: str = "cpu") -> dict[str, Any]:
    """E-FID, FID and FVD between the generated and the real clips (each a dict with "value" and
    "backend", or "reason")."""
    out: dict[str, Any] = {}
    if not real or not gen:
        why = "no real videos given (--real)" if not real else "no measurable generated video"
        return {name: {"reason": why} for name in ("e_fid", "fid", "fvd")}
    g = np.concatenate([clip_metrics.expression_vectors(c, ev.expression) for c in gen])
    r = np.concatenate([clip_metrics.expression_vectors(c, ev.expression) for c in real])
    if min(len(g), len(r)) < 2:
        out["e_fid"] = {"backend": ev.expression_name, "reason": "fewer than 2 expression vectors"}
    else:
        out["e_fid"] = {"backend": ev.expression_name, "value": frechet_between(g, r),
                        "generated_frames": len(g), "real_frames": len(r)}
    out["fid"] = _network_metric("fid", fid, lambda: _fid(gen, real, fid_frames, device))
    out["fvd"] = _network_metric("fvd", fvd,
                                 lambda: _fvd(gen, real, fvd_frames, fvd_windows, device))
    return out


def _network_metric(name: str, wanted: bool | str, run) -> dict[str, Any]:
    if not wanted:
        return {"reason": f"{name} not requested"}
    try:
        return run()
    except MissingWeightsError as exc:
        if wanted != "auto":
            raise
        return {"reason": str(exc)}


def _fid(gen: list[FaceClip], real: list[FaceClip], frames: int, device: str) -> dict[str, Any]:
    from training.metrics.inception import inception_features, load_inception

    model = load_inception(device=device)

    def feats(clips: list[FaceClip]) -> np.ndarray:
        picks = []
        for c in clips:
            idx = np.flatnonzero(c.face_frames)
            picks.append(c.crops[idx[np.linspace(0, len(idx) - 1, min(frames, len(idx))).astype(int)]])
        return inception_features(model, np.concatenate(picks), device=device)

    g, r = feats(gen), feats(real)
    return {"backend": "inception_v3 pool3" + ("" if model.Mixed_7c.pool == "max" else " (torchvision)"),
            "value": frechet_between(g, r), "generated_frames": len(g), "real_frames": len(r)}


def _fvd(gen: list[FaceClip], real: list[FaceClip], frames: int, windows: int,
         device: str) -> dict[str, Any]:
    from training.metrics.i3d import i3d_features, load_i3d

    model = load_i3d(device=device)

    def feats(clips: list[FaceClip]) -> np.ndarray:
        windows = [c.crops[s:s + frames] for c in clips
                   for s in range(0, c.num_frames - frames + 1, frames)[:windows]]
        if not windows:
            raise ValueError(f"FVD needs clips of at least {frames} frames")
        return i3d_features(model, np.stack(windows), device=device)

    g, r = feats(gen), feats(real)
    return {"backend": "i3d kinetics-400 logits", "value": frechet_between(g, r),
            "generated_clips": len(g), "real_clips": len(r), "clip_frames": frames}


def summary(rows: list[dict]) -> dict[str, Any]:
    """Means over the measured clips of the headline numbers."""
    def values(path: tuple[str, ...]) -> list[float]:
        out = []
        for row in rows:
            v: Any = row
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append(float(v))
        return out

    keys = {
        "lip_sync_confidence_av_corr": ("lip_sync", "av_corr", "confidence"),
        "lip_sync_abs_offset_av_corr": ("lip_sync", "av_corr", "offset_frames"),
        "sync_c": ("lip_sync", "syncnet", "sync_c"),
        "sync_d": ("lip_sync", "syncnet", "sync_d"),
        "identity_similarity_dlib": ("identity", "dlib", "similarity"),
        "identity_similarity_arcface": ("identity", "arcface", "similarity"),
        "emotion_accuracy": ("emotion", "accuracy"),
        "sharpness": ("sharpness", "value"),
        "landmark_jitter": ("landmark_jitter", "value"),
    }
    out: dict[str, Any] = {"clips": len(rows), "failed": sum(r["status"] == "failed" for r in rows)}
    for name, path in keys.items():
        v = values(path)
        if "offset" in name:
            v = [abs(x) for x in v]
        if v:
            out[name] = float(np.mean(v))
    return out


def _fmt(metric: dict | None, key: str, digits: int = 2) -> str:
    if not isinstance(metric, dict):
        return ""
    if metric.get("reason"):
        return "n/a"
    v = metric.get(key)
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else str(v))


def markdown_table(result: dict[str, Any]) -> str:
    """The per-clip rows and the set metrics as markdown, each column naming its backend."""
    head = ["video", "status", "offset (av_corr, frames)", "confidence (av_corr)",
            "Sync-C / Sync-D (syncnet)", "identity sim (dlib)", "same (dlib)",
            "identity sim (arcface)", "emotion acc (fer+facex)", "sharpness (laplacian var)",
            "jitter (crop px/frame^2)", "head std yaw/pitch/roll (deg, pnp)", "reasons"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["clips"] + [{**r, "video": f"(real) {r['video']}"} for r in result["real"]]:
        ls, ident = row.get("lip_sync", {}), row.get("identity", {})
        sn = ls.get("syncnet")
        head_m = row.get("head_motion")
        head_s = ("n/a" if head_m and head_m.get("reason") else
                  "/".join(f"{head_m[k]:.1f}" for k in ("yaw_std", "pitch_std", "roll_std"))
                  if head_m else "")
        cells = [Path(row["video"]).name if not row["video"].startswith("(real)") else row["video"],
                 row["status"], _fmt(ls.get("av_corr"), "offset_frames"),
                 _fmt(ls.get("av_corr"), "confidence"),
                 (f"{_fmt(sn, 'sync_c')} / {_fmt(sn, 'sync_d')}" if sn else "not available"),
                 _fmt(ident.get("dlib"), "similarity"), _fmt(ident.get("dlib"), "same_person"),
                 _fmt(ident.get("arcface"), "similarity") if "arcface" in ident else "",
                 _fmt(row.get("emotion"), "accuracy"), _fmt(row.get("sharpness"), "value", 1),
                 _fmt(row.get("landmark_jitter"), "value", 3), head_s,
                 "; ".join(row.get("reasons", []))]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines.append("")
    for name, metric in result.get("set", {}).items():
        if metric.get("reason"):
            lines.append(f"- {name.upper()}: n/a ({metric['reason']})")
        else:
            lines.append(f"- {name.upper()} ({metric['backend']}): {metric['value']:.4g}")
    for name, why in result.get("unavailable", {}).items():
        lines.append(f"- {name}: not used ({why})")
    return "\n".join(lines)
