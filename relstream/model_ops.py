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

Deploy safety checks (each refusal is a :class:`DeployRefused` naming the check):

* ``contract``            the bundle's plan fingerprint (plan.yaml and manifest.json) equals the
                          running contract's (graph-model version skew, seed 002);
* ``tensor-schema``       config.pbtxt inputs/outputs are exactly the contract's tensors, and equal
                          the config Triton is serving now;
* ``embeddings-freshness`` every embedded entity type has a snapshot admissible for anchors at
                          ``now`` (newer than ``now - max_embedding_offset``);
* ``smoke-inference``     the loaded version answers valid requests with finite scores of the
                          right shape and reports its own version;
* warm-up                 N more requests before the version takes traffic (cold cache, seed 002).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from google.protobuf import text_format
from prometheus_client.parser import text_string_to_metric_families

from relstream import lifecycle as lc
from schemas.files import file_sha256 as _sha256
from schemas.plan import ServingPlan, load_plan
from schemas.tensors import Interaction, Window, build_tensors

PLAN_FILE = "plan.yaml"
MANIFEST_FILE = "manifest.json"
EMBEDDINGS_FILE = "embeddings.parquet"
CONFIG_FILE = "config.pbtxt"
REQUIRED_OUTPUTS = ("score",)
CHECKS = ("contract", "tensor-schema", "embeddings-freshness", "smoke-inference")


class DeployRefused(RuntimeError):
    """A deploy safety check failed; ``check`` names it."""

    def __init__(self, check: str, message: str):
        self.check = check
        super().__init__(f"deploy refused by check '{check}': {message}")


class ModelOpsError(RuntimeError):
    """An operation that cannot run (missing version, Triton error)."""


# ----- bundles on disk -------------------------------------------------------------------------

def list_versions(repository: Path, model: str) -> list[int]:
    model_dir = Path(repository) / model
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


@dataclass(frozen=True)
class BundleFiles:
    repository: Path
    model: str
    version: int

    @property
    def dir(self) -> Path:
        return Path(self.repository) / self.model / str(self.version)

    @property
    def config_path(self) -> Path:
        return Path(self.repository) / self.model / CONFIG_FILE

    def require(self) -> "BundleFiles":
        if not self.dir.is_dir():
            have = list_versions(self.repository, self.model)
            raise ModelOpsError(f"version {self.version} of model {self.model!r} not found in "
                                f"{self.repository} (versions there: {have or 'none'})")
        return self

    def plan(self) -> ServingPlan:
        return load_plan(self.dir / PLAN_FILE)

    def manifest(self) -> dict:
        path = self.dir / MANIFEST_FILE
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DeployRefused("contract", f"{path} is not valid JSON ({exc})") from None


# ----- config.pbtxt ------------------------------------------------------------------------------

def parse_model_config(text: str, where: str = CONFIG_FILE):
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise DeployRefused("tensor-schema", f"{where} does not parse: {exc}") from None
    return cfg


def _dtype_name(cfg_enum_value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    name = model_config_pb2.DataType.Name(cfg_enum_value)  # TYPE_INT64
    name = name.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def config_signature(cfg) -> dict[str, dict[str, tuple]]:
    """{"inputs": {name: (datatype, dims)}, "outputs": {...}} from a parsed ModelConfig."""
    return {
        "inputs": {i.name: (_dtype_name(i.data_type), tuple(i.dims)) for i in cfg.input},
        "outputs": {o.name: (_dtype_name(o.data_type), tuple(o.dims)) for o in cfg.output},
    }


def json_config_signature(cfg: Mapping) -> dict[str, dict[str, tuple]]:
    """The same signature from Triton's JSON model config (GET /v2/models/<m>/config)."""
    def dtype(v: str) -> str:
        v = v.removeprefix("TYPE_")
        return "BYTES" if v == "STRING" else v
    return {
        "inputs": {i["name"]: (dtype(i["data_type"]), tuple(int(d) for d in i.get("dims", ())))
                   for i in cfg.get("input", ())},
        "outputs": {o["name"]: (dtype(o["data_type"]), tuple(int(d) for d in o.get("dims", ())))
                    for o in cfg.get("output", ())},
    }


def plan_signature(plan: ServingPlan) -> dict[str, tuple]:
    return {t.name: (t.triton_dtype, tuple(t.dims)) for t in plan.tensors}


def slot_config(text: str, name: str, version: int, warmup_count: int = 0) -> str:
    """The config of the per-version Triton model: ``name``, only ``version``, optional warm-up.

    ``warmup_count > 0`` writes Triton's own ``model_warmup``: the version runs that many
    zero-filled requests (empty, short and full histories) *before* it turns READY, so no live
    request meets a cold instance (cold cache, seed 002). Leading comment lines are kept.
    """

    cfg = parse_model_config(text)
    cfg.name = name
    cfg.version_policy.specific.versions[:] = [int(version)]
    del cfg.model_warmup[:]
    if warmup_count > 0:
        for seq_len in _warmup_lengths(cfg):
            w = cfg.model_warmup.add()
            w.name = f"relstream_warmup_len{seq_len}"
            w.batch_size = 1
            w.count = warmup_count
            for inp in cfg.input:
                dims = [seq_len if d == -1 else d for d in inp.dims]
                w.inputs[inp.name].data_type = inp.data_type
                w.inputs[inp.name].dims.extend(dims)
                w.inputs[inp.name].zero_data = True
    header = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            header.append(line)
        else:
            break
    return "\n".join(header + [text_format.MessageToString(cfg)])


def _warmup_lengths(cfg) -> tuple[int, ...]:
    """History lengths to warm: empty, short and 32 (the ragged inputs' variable dim)."""
    ragged = any(-1 in tuple(i.dims) for i in cfg.input)
    return (0, 4, 32) if ragged else (1,)


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link a version directory (copy where links cannot be made, e.g. across devices)."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with open(fd, "w") as fh:
        fh.write(text)
    Path(tmp).replace(path)


# ----- checks (pure) ---------------------------------------------------------------------------

def check_contract(contract: ServingPlan, bundle_plan: ServingPlan, manifest: Mapping) -> None:
    want = contract.fingerprint()
    got = bundle_plan.fingerprint()
    if got != want:
        diff = sorted(set(bundle_plan.tensor_names) ^ set(contract.tensor_names))
        detail = f"; tensors only on one side: {diff}" if diff else " (same tensor names: max_len, offsets or keys differ)"
        raise DeployRefused("contract", f"bundle plan {bundle_plan.name!r} fingerprint {got} != running "
                                        f"contract {contract.name!r} {want}{detail}")
    claimed = manifest.get("plan_fingerprint")
    if claimed is not None and claimed != got:
        raise DeployRefused("contract", f"manifest.json plan_fingerprint {claimed} != plan.yaml's {got}: "
                                        "the bundle was edited after export")


def check_tensor_schema(contract: ServingPlan, bundle_signature: Mapping,
                        running_signature: Mapping | None = None) -> None:
    want = plan_signature(contract)
    got = dict(bundle_signature["inputs"])
    for name, spec in want.items():
        if name not in got:
            raise DeployRefused("tensor-schema", f"config.pbtxt lacks input {name!r} of the contract")
        if got[name] != spec:
            raise DeployRefused("tensor-schema", f"config.pbtxt input {name!r} is {got[name][0]} dims "
                                                 f"{list(got[name][1])}; the contract says {spec[0]} dims {list(spec[1])}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise DeployRefused("tensor-schema", f"config.pbtxt has inputs the contract does not send: {extra}")
    for out in REQUIRED_OUTPUTS:
        if out not in bundle_signature["outputs"]:
            raise DeployRefused("tensor-schema", f"config.pbtxt lacks output {out!r}")
    if running_signature is not None and dict(running_signature) != dict(bundle_signature):
        changed = sorted(k for part in ("inputs", "outputs")
                         for k in set(running_signature[part]) | set(bundle_signature[part])
                         if running_signature[part].get(k) != bundle_signature[part].get(k))
        raise DeployRefused("tensor-schema", f"config.pbtxt differs from the config Triton is serving "
                                             f"for the primary in {changed}; a new schema is a new model")


def newest_snapshots(path: Path) -> dict[str, int]:
    """Newest ``snapshot_time`` per ``entity_type`` in an embeddings.parquet."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["entity_type", "snapshot_time"])
    except FileNotFoundError:
        raise DeployRefused("embeddings-freshness", f"{path} not found") from None
    except (KeyError, ValueError, OSError) as exc:  # pyarrow: missing column / not parquet
        raise DeployRefused("embeddings-freshness", f"{path}: needs columns entity_type, snapshot_time ({exc})") from None
    if table.num_rows == 0:
        return {}
    grouped = table.group_by("entity_type").aggregate([("snapshot_time", "max")])
    return {str(t): int(s) for t, s in zip(grouped.column("entity_type").to_pylist(),
                                             grouped.column("snapshot_time_max").to_pylist())}


def check_embeddings_fresh(contract: ServingPlan, newest: Mapping[str, int], now_ns: int) -> None:
    lo, _hi = contract.embedding_snapshot_bounds(now_ns)
    for etype in dict.fromkeys(contract.embedding_entity_types):
        if etype not in newest:
            raise DeployRefused("embeddings-freshness", f"embeddings.parquet has no snapshot for entity type "
                                                        f"{etype!r}: every {etype} would be a cold start")
        if newest[etype] < lo:
            age_h = (now_ns - newest[etype]) / 3.6e12
            max_h = contract.max_embedding_offset.ns / 3.6e12
            raise DeployRefused("embeddings-freshness", f"newest {etype!r} snapshot is {age_h:.1f} h old, older "
                                                        f"than max_embedding_offset ({max_h:.1f} h): no anchor now "
                                                        "could use it")


def check_smoke_outputs(outputs: Mapping[str, np.ndarray], served_version: str, version: int, batch: int) -> None:
    if str(served_version) != str(version):
        raise DeployRefused("smoke-inference", f"asked version {version}, Triton answered with {served_version!r}")
    score = outputs.get("score")
    if score is None:
        raise DeployRefused("smoke-inference", "response has no 'score' output")
    if score.shape != (batch, 1):
        raise DeployRefused("smoke-inference", f"score shape {list(score.shape)}, expected [{batch}, 1]")
    if not np.isfinite(score).all():
        raise DeployRefused("smoke-inference", f"non-finite score {score.reshape(-1).tolist()}")


# ----- Triton ----------------------------------------------------------------------------------

class TritonControl:
    """The few Triton calls the control plane makes, all over gRPC.

    gRPC, not HTTP: a model load over HTTP was measured to stall HTTP inference requests to
    *other*, already-loaded models for the whole load (5.8-9.7 s with the distilled model; gRPC
    clients were not affected), while the same load over gRPC left HTTP clients at p99 1.3-2.8x
    their baseline with zero errors (bench/bench_canary_rollout.py).
    """

    def __init__(self, grpc_url: str, timeout_s: float = 180.0):
        import tritonclient.grpc as tg

        self._tg = tg
        self.url = grpc_url.split("://", 1)[-1]
        self._timeout_s = timeout_s
        self._client = tg.InferenceServerClient(self.url)

    def close(self) -> None:
        self._client.close()

    def load(self, name: str) -> None:
        from tritonclient.utils import InferenceServerException
        try:
            self._client.load_model(name, client_timeout=self._timeout_s)
        except InferenceServerException as exc:
            raise ModelOpsError(f"Triton could not load {name!r}: {exc.message()}") from None

    def unload(self, name: str) -> None:
        self._client.unload_model(name)

    def ready_versions(self, model: str) -> dict[int, str]:
        """{version: state} of the per-version Triton models of ``model``."""
        out = {}
        for entry in self._client.get_model_repository_index(as_json=True).get("models", []):
            version = lc.parse_triton_model_name(entry.get("name", ""), model)
            if version is not None and entry.get("state"):
                out[version] = entry["state"]
        return out

    def config(self, name: str) -> dict | None:
        """Triton's JSON model config of a loaded model; None when it is not ready."""
        from tritonclient.utils import InferenceServerException
        try:
            if not self._client.is_model_ready(name):
                return None
            return self._client.get_model_config(name, as_json=True).get("config")
        except InferenceServerException:
            return None

    def infer(self, plan: ServingPlan, model: str, version: int, tensors: Mapping[str, np.ndarray]):
        """Score one request on ``version``; returns ({output: array}, version that answered)."""
        from tritonclient.utils import InferenceServerException
        tg = self._tg
        inputs = []
        for spec in plan.tensors:
            arr = np.asarray(tensors[spec.name])
            inp = tg.InferInput(spec.name, list(arr.shape), spec.triton_dtype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        try:
            res = self._client.infer(lc.triton_model_name(model, version), inputs, model_version=str(version),
                                     client_timeout=30)
        except InferenceServerException as exc:
            raise DeployRefused("smoke-inference", f"version {version}: {exc.message()}") from None
        body = res.get_response(as_json=True)
        outs = {o["name"]: res.as_numpy(o["name"]) for o in body.get("outputs", ())}
        return outs, str(body.get("model_version", ""))

    def stats(self, model: str, versions: Iterable[int]) -> dict[int, dict]:
        """Per-version counters from Triton's statistics API (loaded versions only)."""
        from tritonclient.utils import InferenceServerException
        out = {}
        for version in versions:
            try:
                raw = self._client.get_inference_statistics(lc.triton_model_name(model, version), as_json=True)
            except InferenceServerException:
                continue
            for s in raw.get("model_stats", ()):
                inf = s.get("inference_stats", {})
                ok = inf.get("success", {})
                n_ok = int(ok.get("count", 0))
                queue = inf.get("queue", {})
                out[version] = {
                    "success": n_ok,
                    "fail": int(inf.get("fail", {}).get("count", 0)),
                    "avg_request_ms": int(ok.get("ns", 0)) / n_ok / 1e6 if n_ok else None,
                    "avg_queue_ms": int(queue.get("ns", 0)) / max(int(queue.get("count", 0)), 1) / 1e6,
                    "inferences": int(s.get("inference_count", 0)),
                    "executions": int(s.get("execution_count", 0)),
                    "batch_sizes": {int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0))
                                    for b in s.get("batch_stats", ())},
                }
        return out


# ----- synthetic traffic for smoke / warm-up ---------------------------------------------------

def synthetic_requests(plan: ServingPlan, n: int, now_ns: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` valid single-row requests anchored at ``now`` with histories of varied lengths.

    Built with :func:`schemas.tensors.build_tensors` from synthetic rows, so they go through the
    same tensor code as live traffic. Lengths cycle through 0, 1, a middle value and ``max_len``
    so warm-up touches the empty-history and the full-window paths.
    """

    rng = np.random.default_rng(seed)

    def value(dtype: str, i: int):
        if dtype == "timestamp":
            return now_ns
        if dtype == "int64":
            return int(rng.integers(1, 1000))
        if dtype in ("float32", "float64"):
            return float(np.round(rng.uniform(1, 200), 2))
        return f"v{i}".encode()

    out = []
    for i in range(n):
        fact = {c: value(plan.fact.columns[c], i) for c in plan.fact_columns}
        fact[plan.fact.time_column] = now_ns
        windows = {}
        for hop in plan.hops:
            table = plan.interaction_table(hop)
            length = (0, 1, max(hop.max_len // 2, 1), hop.max_len)[i % 4]
            lo, hi = plan.rti_bounds(now_ns)
            times = np.sort(rng.integers(lo, hi, length)) if length else np.zeros(0, np.int64)
            items = [Interaction(event_id=j, event_time=int(t),
                                 values={c: (int(t) if c == table.time_column else value(table.columns[c], j))
                                         for c in hop.columns})
                     for j, t in enumerate(times)]
            windows[hop.key.key] = Window.from_interactions(plan, hop, items)
        out.append(build_tensors(plan, fact, windows, anchor_time=now_ns))
    return out


# ----- the control plane -------------------------------------------------------------------------

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




# ----- per-version score distribution from the scorers' /metrics ------------------------------------

SCORE_HISTOGRAM = "relstream_scorer_score"


def parse_version_histograms(text: str, name: str = SCORE_HISTOGRAM) -> dict[str, dict]:
    """{model_version: {"count", "mean", "buckets": {le: cumulative}}} from Prometheus text."""

    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != name:
            continue
        for s in fam.samples:
            version = s.labels.get("model_version")
            if version is None:
                continue
            entry = out.setdefault(version, {"count": 0.0, "sum": 0.0, "buckets": {}})
            if s.name.endswith("_bucket"):
                le = s.labels["le"]
                entry["buckets"][le] = entry["buckets"].get(le, 0.0) + s.value
            elif s.name.endswith("_count"):
                entry["count"] += s.value
            elif s.name.endswith("_sum"):
                entry["sum"] += s.value
    for entry in out.values():
        entry["mean"] = entry["sum"] / entry["count"] if entry["count"] else None
    return out


def scorer_version_metrics(urls: Sequence[str]) -> dict[str, dict]:
    """Merge the score histograms of several scorer /metrics endpoints (unreachable ones skipped)."""

    merged: dict[str, dict] = {}
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for version, h in parse_version_histograms(text).items():
            m = merged.setdefault(version, {"count": 0.0, "sum": 0.0, "buckets": {}})
            m["count"] += h["count"]
            m["sum"] += h["sum"]
            for le, c in h["buckets"].items():
                m["buckets"][le] = m["buckets"].get(le, 0.0) + c
    for m in merged.values():
        m["mean"] = m["sum"] / m["count"] if m["count"] else None
        m["quantiles"] = {q: histogram_quantile(q, m["buckets"]) for q in (0.5, 0.9, 0.99)}
    return merged


def histogram_quantile(q: float, buckets: Mapping[str, float]) -> float | None:
    """Prometheus-style quantile from cumulative buckets (linear within a bucket)."""
    edges = sorted(((math.inf if le == "+Inf" else float(le)), c) for le, c in buckets.items())
    if not edges or edges[-1][1] == 0:
        return None
    rank = q * edges[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in edges:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0.0)
        prev_le, prev_c = le, c
    return prev_le
