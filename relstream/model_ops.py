"""The model control plane's I/O: bundles on disk, deploy safety checks, Triton version control.

Design (Triton 2.51, ``--model-control-mode=explicit``): every export is a numbered version
directory of ``<repository>/<model>/`` (the artifact store, never loaded as such). A version that
takes traffic is served as its *own* Triton model ``<model>__v<N>`` (:func:`relstream.lifecycle.
triton_model_name`): a small directory with a copy of the model's ``config.pbtxt`` (name
rewritten, ``version_policy`` pinned to N, Triton ``model_warmup`` added) and ``N/`` hard-linked
to the export. Why not one Triton model with ``version_policy { specific { versions: [...] } }``:
that was measured here first (bench/bench_canary_rollout.py): re-loading the model to add a
version re-initialises the running version too (its statistics restart, the load takes twice
as long, p99 3-5x during it). A per-version model loads beside the running one untouched.
Dropping a version first moves the routing away, waits ``drain_s`` (longer than the scorers'
routing-file poll interval) and only then unloads.

Deploy safety checks: :mod:`relstream.model_checks`; bundles and their config.pbtxt:
:mod:`relstream.model_bundles`; Triton's model control: :mod:`relstream.triton_control`.
"""
from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from relstream import lifecycle as lc
from schemas.files import file_sha256 as _sha256
from schemas.plan import ServingPlan

from .model_bundles import (CONFIG_FILE, EMBEDDINGS_FILE, MANIFEST_FILE, PLAN_FILE, BundleFiles, _atomic_write,
                            config_signature, json_config_signature, link_tree, list_versions, parse_model_config,
                            slot_config)
from .model_checks import (CHECKS, DeployRefused, check_contract, check_embeddings_fresh, check_smoke_outputs,
                           check_tensor_schema, newest_snapshots, synthetic_requests)
from .model_metrics import scorer_version_metrics
from .triton_control import ModelOpsError, TritonControl


def wall_clock_ns() -> int:
    return time.time_ns()


@dataclass
class ModelOps:
    """deploy / promote / rollback / refresh-embeddings / status for one model.

    ``contract`` is the serving plan the scorers run with; ``None`` means "the plan of the
    current primary" (and, for the very first deploy, the bundle's own plan).
    """

    repository: Path
    model: str
    triton: TritonControl
    contract: ServingPlan | None = None
    routing_path: Path | None = None
    clock: Callable[[], int] = wall_clock_ns
    sleep: Callable[[float], None] = time.sleep
    drain_s: float = 2.0
    warmup_requests: int = 32
    triton_warmup: int = 8  # per history length, run by Triton before a loaded version is READY
    smoke_requests: int = 4
    ready_timeout_s: float = 180.0
    log: Callable[[str], None] = lambda msg: None

    def __post_init__(self):
        self.repository = Path(self.repository)
        if self.routing_path is None:
            self.routing_path = lc.default_routing_path(self.repository, self.model)

    # ----- state -----------------------------------------------------------------------
    def state(self) -> lc.RoutingState:
        return lc.load_routing(self.routing_path) or lc.RoutingState(model=self.model)

    def bundle(self, version: int) -> BundleFiles:
        return BundleFiles(self.repository, self.model, version).require()

    def bundle_exists(self, version: int) -> bool:
        return BundleFiles(self.repository, self.model, version).dir.is_dir()

    def running_contract(self, state: lc.RoutingState, fallback: ServingPlan) -> ServingPlan:
        if self.contract is not None:
            return self.contract
        if state.primary is not None and self.bundle_exists(state.primary):
            return self.bundle(state.primary).plan()
        return fallback

    # ----- checks ------------------------------------------------------------------------
    def static_checks(self, version: int, state: lc.RoutingState, skip: Sequence[str] = ()) -> lc.VersionInfo:
        """contract, tensor-schema and embeddings-freshness for a bundle on disk."""
        unknown = sorted(set(skip) - set(CHECKS))
        if unknown:
            raise ModelOpsError(f"unknown check(s) to skip {unknown}; checks are {list(CHECKS)}")
        files = self.bundle(version)
        try:
            plan = files.plan()
        except ValueError as exc:  # PlanError names the field
            raise DeployRefused("contract", f"{files.dir / PLAN_FILE}: {exc}") from None
        manifest = files.manifest()
        contract = self.running_contract(state, plan)
        if "contract" not in skip:
            check_contract(contract, plan, manifest)
        if "tensor-schema" not in skip:
            if not files.config_path.exists():
                raise DeployRefused("tensor-schema", f"{files.config_path} not found")
            signature = config_signature(parse_model_config(files.config_path.read_text(), str(files.config_path)))
            running = None
            if state.primary is not None:
                running = self.triton.config(lc.triton_model_name(self.model, state.primary))
            check_tensor_schema(contract, signature, json_config_signature(running) if running else None)
        newest = newest_snapshots(files.dir / EMBEDDINGS_FILE)
        if "embeddings-freshness" not in skip:
            check_embeddings_fresh(contract, newest, self.clock())
        derived = manifest.get("derived_from")
        # the binding constraint: the newest snapshot of the entity type whose snapshots are oldest
        return lc.VersionInfo(fingerprint=plan.fingerprint(), deployed_at_ns=self.clock(),
                              embeddings_newest_ns=min(newest.values()) if newest else None,
                              source=f"refresh-embeddings from {derived}" if derived else "export")

    def smoke_and_warm(self, version: int, skip: Sequence[str] = ()) -> dict:
        plan = self.bundle(version).plan()
        now = self.clock()
        report: dict[str, Any] = {"version": version}
        if "smoke-inference" not in skip:
            for tensors in synthetic_requests(plan, self.smoke_requests, now, seed=version):
                outs, served = self.triton.infer(plan, self.model, version, tensors)
                check_smoke_outputs(outs, served, version, batch=1)
            report["smoke_requests"] = self.smoke_requests
        lat = []
        for tensors in synthetic_requests(plan, self.warmup_requests, now, seed=1000 + version):
            t0 = time.perf_counter()
            self.triton.infer(plan, self.model, version, tensors)
            lat.append((time.perf_counter() - t0) * 1e3)
        report["warmup_requests"] = len(lat)
        if lat:
            report["warmup_p50_ms"] = round(float(np.median(lat)), 3)
            report["warmup_first_ms"] = round(lat[0], 3)
        return report

    # ----- per-version Triton models -------------------------------------------------------
    def slot_dir(self, version: int) -> Path:
        return self.repository / lc.triton_model_name(self.model, version)

    def materialize(self, version: int) -> Path:
        """Write the per-version Triton model (kept as is when it already exists)."""
        slot = self.slot_dir(version)
        if (slot / CONFIG_FILE).exists() and (slot / str(version)).is_dir():
            return slot
        files = self.bundle(version)
        slot.mkdir(parents=True, exist_ok=True)
        link_tree(files.dir, slot / str(version))
        text = slot_config(files.config_path.read_text(), slot.name, version, self.triton_warmup)
        _atomic_write(slot / CONFIG_FILE, text)  # last: a slot with a config is complete
        return slot

    def load_version(self, version: int) -> None:
        """Load ``version`` as its own Triton model unless it is READY already."""
        if self.triton.ready_versions(self.model).get(version) == "READY":
            return
        self.materialize(version)
        self.log(f"loading {lc.triton_model_name(self.model, version)}")
        self.triton.load(lc.triton_model_name(self.model, version))
        deadline = time.monotonic() + self.ready_timeout_s
        while self.triton.ready_versions(self.model).get(version) != "READY":
            if time.monotonic() > deadline:
                raise ModelOpsError(f"{lc.triton_model_name(self.model, version)} not READY after "
                                    f"{self.ready_timeout_s}s")
            self.sleep(0.05)

    def unload_versions(self, keep: Iterable[int], keep_on_disk: Iterable[int] = ()) -> list[int]:
        """Unload every per-version model not in ``keep``; delete slots not in ``keep_on_disk``."""
        keep, keep_on_disk = set(keep), set(keep) | set(keep_on_disk)
        dropped = []
        for version, st in sorted(self.triton.ready_versions(self.model).items()):
            if version not in keep and st in ("READY", "LOADING"):
                self.log(f"unloading {lc.triton_model_name(self.model, version)}")
                self.triton.unload(lc.triton_model_name(self.model, version))
                dropped.append(version)
        prefix = f"{self.model}{lc.SLOT_SEPARATOR}"
        for slot in self.repository.glob(f"{prefix}*"):
            version = lc.parse_triton_model_name(slot.name, self.model)
            if version is not None and version not in keep_on_disk and slot.is_dir():
                shutil.rmtree(slot, ignore_errors=True)  # the export itself stays in <model>/<N>
        return dropped

    def _save(self, state: lc.RoutingState) -> None:
        lc.save_routing(self.routing_path, state)

    @contextmanager
    def _exclusive(self):
        """One control-plane operation per model at a time (two operators, two terminals)."""
        lock = Path(str(self.routing_path) + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ModelOpsError(f"another `relstream model` operation on {self.model!r} is running "
                                    f"(lock {lock})") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ----- operations --------------------------------------------------------------------
    def _deploy(self, version: int, canary_percent: float | None = None, skip: Sequence[str] = ()) -> dict:
        state = self.state()
        info = self.static_checks(version, state, skip)
        new_state = lc.deploy(state, version, info, self.clock(), canary_percent)  # refuses bad transitions
        ramp_only = state.canary == version and self.triton.ready_versions(self.model).get(version) == "READY"
        report: dict[str, Any] = {"action": "ramp" if ramp_only else "deploy", "version": version}
        if not ramp_only:
            self.load_version(version)
            try:
                report.update(self.smoke_and_warm(version, skip))
            except DeployRefused:
                self.log(f"smoke inference failed: unloading version {version}")
                self.unload_versions(keep=state.serving_versions, keep_on_disk=_kept(state))
                raise
            info = replace(info, warmup_requests=report.get("warmup_requests", 0))
            new_state = replace(new_state, versions={**new_state.versions, version: info})
        if skip:  # an operator override stays visible in the audit trail
            last = {**new_state.history[-1], "skipped_checks": sorted(skip)}
            new_state = replace(new_state, history=new_state.history[:-1] + (last,))
        self._save(new_state)
        report["split"] = new_state.split()
        return report

    def _promote(self) -> dict:
        state = self.state()
        new_state = lc.promote(state, self.clock())
        self._save(new_state)  # traffic moves first ...
        self.sleep(self.drain_s)  # ... every scorer re-reads the routing file ...
        dropped = self.unload_versions(new_state.serving_versions, _kept(new_state))  # ... then unload
        return {"action": "promote", "primary": new_state.primary, "unloaded": dropped,
                "split": new_state.split()}

    def _rollback(self) -> dict:
        state = self.state()
        new_state = lc.rollback(state, self.clock())
        report: dict[str, Any] = {"action": "rollback", "primary": new_state.primary}
        if state.canary is None:
            # back to the previous primary: load and warm it before it takes traffic again
            self.load_version(new_state.primary)
            report.update(self.smoke_and_warm(new_state.primary))
        self._save(new_state)
        self.sleep(self.drain_s)
        report["unloaded"] = self.unload_versions(new_state.serving_versions, _kept(new_state))
        report["split"] = new_state.split()
        return report

    def _refresh_embeddings(self, from_version: int, embeddings: Path) -> dict:
        """Copy a version with a new embeddings.parquet into a new version (no retraining)."""
        import pyarrow.parquet as pq

        src = self.bundle(from_version)
        embeddings = Path(embeddings)
        if not embeddings.is_file():
            raise ModelOpsError(f"--embeddings {embeddings}: file not found")
        old_schema = pq.read_schema(src.dir / EMBEDDINGS_FILE)
        try:
            new_schema = pq.read_schema(embeddings)
        except Exception as exc:  # pyarrow raises ArrowInvalid for non-parquet files
            raise ModelOpsError(f"--embeddings {embeddings}: not a parquet file ({exc})") from None
        for f in old_schema:
            if new_schema.get_field_index(f.name) < 0:
                raise ModelOpsError(f"{embeddings}: column {f.name!r} missing (the model's file has "
                                    f"{old_schema.names})")
            if new_schema.field(f.name).type != f.type:
                raise ModelOpsError(f"{embeddings}: column {f.name!r} is {new_schema.field(f.name).type}, "
                                    f"the model expects {f.type}")
        version = max(list_versions(self.repository, self.model)) + 1
        model_dir = self.repository / self.model
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
        try:
            link_tree(src.dir, staging)
            (staging / EMBEDDINGS_FILE).unlink()  # a hard link: never write through it
            shutil.copy2(embeddings, staging / EMBEDDINGS_FILE)
            manifest = src.manifest()
            manifest.update(version=version, derived_from=from_version,
                            embeddings_refreshed_at_ns=self.clock(),
                            embeddings_sha256=_sha256(staging / EMBEDDINGS_FILE),
                            embeddings_newest_snapshot=newest_snapshots(staging / EMBEDDINGS_FILE))
            (staging / MANIFEST_FILE).unlink()
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
            staging.rename(model_dir / str(version))  # never a half-written version
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return {"action": "refresh-embeddings", "from": from_version, "version": version,
                "next": f"relstream model deploy {version} --canary 10"}

    def deploy(self, version: int, canary_percent: float | None = None, skip: Sequence[str] = ()) -> dict:
        with self._exclusive():
            return self._deploy(version, canary_percent, skip)

    def promote(self) -> dict:
        with self._exclusive():
            return self._promote()

    def rollback(self) -> dict:
        with self._exclusive():
            return self._rollback()

    def refresh_embeddings(self, from_version: int, embeddings: Path) -> dict:
        with self._exclusive():
            return self._refresh_embeddings(from_version, embeddings)

    def sync(self) -> dict:
        """Load (and warm) every routed version Triton is not serving, e.g. after a Triton restart.

        Triton in explicit model control starts empty; the routing file still names the
        versions, so this brings Triton back in line with it without changing any routing.
        """
        with self._exclusive():
            state = self.state()
            before = self.triton.ready_versions(self.model)
            loaded = []
            for version in state.serving_versions:
                if before.get(version) != "READY":
                    self.load_version(version)
                    self.smoke_and_warm(version)
                    loaded.append(version)
            return {"action": "sync", "loaded": loaded, "split": state.split()}

    def status(self, scorer_metrics: Sequence[str] = ()) -> dict:
        state = self.state()
        on_disk = list_versions(self.repository, self.model)
        triton_states = self.triton.ready_versions(self.model)
        stats = self.triton.stats(self.model, [v for v, s in triton_states.items() if s == "READY"])
        scores = scorer_version_metrics(scorer_metrics)
        split = state.split()
        rows = []
        for v in sorted(set(on_disk) | set(triton_states) | set(state.versions)):
            role = ("primary" if v == state.primary else "canary" if v == state.canary
                    else "previous" if v == state.previous else "")
            info = state.versions.get(v)
            rows.append({
                "version": v, "role": role, "traffic_percent": split.get(v, 0.0),
                "triton_model": lc.triton_model_name(self.model, v),
                "triton": triton_states.get(v, "-"), "on_disk": v in on_disk,
                "fingerprint": info.fingerprint if info else None,
                "embeddings_newest_ns": info.embeddings_newest_ns if info else None,
                "source": info.source if info else None,
                "triton_stats": stats.get(v), "scores": scores.get(str(v)),
            })
        drift = sorted(set(state.serving_versions) - {v for v, s in triton_states.items() if s == "READY"})
        return {"model": self.model, "routing_file": str(self.routing_path), "primary": state.primary,
                "canary": state.canary, "canary_percent": state.canary_percent, "previous": state.previous,
                "versions": rows, "not_ready_but_routed": drift, "history": list(state.history[-5:])}


def _kept(state: lc.RoutingState) -> tuple[int, ...]:
    """Per-version model directories to keep: the serving ones and the rollback target."""
    return tuple(v for v in (*state.serving_versions, state.previous) if v is not None)
