"""What the run writes into the catalog's manifest about its stages and its code."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pipeline.models.registry import weights_checksum
from pipeline.stages.contract import Stage, config_dict


def stage_manifest(names: list[str], stages: list[Stage]) -> dict[str, dict]:
    """Per covered stage: its fingerprint, runner stage, version, config, models and what the
    config resolves to where readers need it (the faces crop geometry)."""
    out = {}
    for name, stage in zip(names, stages):
        by_stage = stage.models_by_stage()
        for covered, fp in stage.fingerprints().items():
            models = [
                {"key": s.key, "backend": s.backend, "version": s.version, "license": s.license,
                 "commercial_ok": s.commercial_ok, "weights": weights_checksum(s),
                 **({"outputs": list(s.outputs)} if s.outputs else {})}
                for s in by_stage.get(covered, [])
            ]
            out[covered] = {"fingerprint": fp, "runner_stage": name, "version": stage.version_for(covered),
                            "config": config_dict(stage.config_for(covered)), "models": models}
            resolved = stage.resolved_for(covered)
            if resolved:
                out[covered]["resolved"] = resolved
    return out


def code_version() -> str:
    """The installed emoforge's version, or "unknown" when it runs from a source tree."""
    try:
        return version("emoforge")
    except PackageNotFoundError:
        return "unknown"
