"""Pure lifecycle logic: stable routing, split accuracy, state transitions, the state file."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from relstream import lifecycle as lc
from relstream.lifecycle import LifecycleError, RoutingState, VersionInfo

T0 = 1_700_000_000_000_000_000


def info(fp="abc"):
    return VersionInfo(fingerprint=fp, deployed_at_ns=T0)


def canary_state(pct=10.0, primary=1, canary=2):
    s = lc.deploy(RoutingState(model="m"), primary, info(), T0)
    return lc.deploy(s, canary, info(), T0 + 1, canary_percent=pct)


# ----- routing -----------------------------------------------------------------------------

def test_route_is_stable_across_processes():
    """blake2b, not Python's per-process salted hash: another interpreter routes identically."""
    state = canary_state(30.0)
    ids = [f"cust-{i}" for i in range(200)] + list(range(200))
    here = [lc.route(e, state) for e in ids]
    code = (
        "import json,sys; from relstream import lifecycle as lc;"
        "s=lc.RoutingState.from_dict(json.loads(sys.argv[1]));"
        "ids=json.loads(sys.argv[2]);"
        "print(json.dumps([lc.route(e,s) for e in ids]))"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(state.to_dict()), json.dumps(ids)],
                         capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert json.loads(out.stdout) == here
    assert set(here) == {1, 2}


@pytest.mark.parametrize("pct", [1.0, 10.0, 25.0, 50.0, 90.0])
def test_split_accuracy(pct):
    state = canary_state(pct)
    n = 100_000
    canary = sum(lc.route(i, state) == 2 for i in range(n))
    # binomial std at n=1e5 is <= 0.16 %; allow ~4 sigma
    assert abs(canary / n * 100 - pct) < 0.65, (canary / n * 100, pct)


def test_ramp_keeps_existing_canary_cohort():
    s10 = canary_state(10.0)
    s50 = lc.set_canary_percent(s10, 50.0, T0 + 5)
    in10 = {e for e in range(20_000) if lc.route(e, s10) == 2}
    in50 = {e for e in range(20_000) if lc.route(e, s50) == 2}
    assert in10 and in10 < in50


def test_each_rollout_draws_a_new_cohort():
    a = canary_state(10.0, canary=2)
    b = canary_state(10.0, canary=3)
    ca = {e for e in range(20_000) if lc.route(e, a) == 2}
    cb = {e for e in range(20_000) if lc.route(e, b) == 3}
    overlap = len(ca & cb) / len(ca)
    assert overlap < 0.2  # independent cohorts overlap ~10 %


def test_route_without_state_or_canary():
    assert lc.route("x", None) is None
    assert lc.route("x", RoutingState(model="m")) is None
    s = lc.deploy(RoutingState(model="m"), 4, info(), T0)
    assert {lc.route(i, s) for i in range(1000)} == {4}


def test_int_and_string_ids_share_a_bucket():
    assert lc.entity_bucket(42) == lc.entity_bucket("42") == lc.entity_bucket(b"42")


# ----- transitions -------------------------------------------------------------------------

def test_deploy_promote_rollback_cycle():
    s = lc.deploy(RoutingState(model="m"), 1, info("f1"), T0)
    assert (s.primary, s.canary, s.split()) == (1, None, {1: 100.0})
    s = lc.deploy(s, 2, info("f2"), T0 + 1, canary_percent=10)
    assert s.split() == {1: 90.0, 2: 10.0} and s.serving_versions == (1, 2)
    s = lc.deploy(s, 2, info("f2"), T0 + 2, canary_percent=50)  # ramp the same canary
    assert s.canary_percent == 50.0
    s = lc.promote(s, T0 + 3)
    assert (s.primary, s.canary, s.previous, s.serving_versions) == (2, None, 1, (2,))
    s = lc.rollback(s, T0 + 4)
    assert (s.primary, s.previous) == (1, None)
    assert [h["action"] for h in s.history] == ["deploy", "deploy", "ramp", "promote", "rollback"]


def test_rollback_drops_canary_first():
    s = lc.rollback(canary_state(), T0 + 9)
    assert (s.primary, s.canary, s.canary_percent) == (1, None, 0.0)
    with pytest.raises(LifecycleError, match="nothing to roll back"):
        lc.rollback(s, T0 + 10)


@pytest.mark.parametrize("bad, match", [
    (lambda: lc.deploy(RoutingState(model="m"), 1, info(), T0, canary_percent=10), "no primary"),
    (lambda: lc.deploy(canary_state(), 1, info(), T0, canary_percent=10), "already the primary"),
    (lambda: lc.deploy(canary_state(), 3, info(), T0, canary_percent=10), "canary 2 is already in progress"),
    (lambda: lc.deploy(lc.promote(canary_state(), T0), 3, info(), T0), "with --canary"),
    (lambda: lc.deploy(canary_state(), 2, info(), T0, canary_percent=0), "within"),
    (lambda: lc.deploy(canary_state(), 2, info(), T0, canary_percent=101), "within"),
    (lambda: lc.deploy(RoutingState(model="m"), 0, info(), T0), "version must be"),
    (lambda: lc.promote(lc.deploy(RoutingState(model="m"), 1, info(), T0), T0), "no canary to promote"),
    (lambda: lc.set_canary_percent(lc.deploy(RoutingState(model="m"), 1, info(), T0), 5, T0), "no canary"),
])
def test_refused_transitions(bad, match):
    with pytest.raises(LifecycleError, match=match):
        bad()


# ----- state file --------------------------------------------------------------------------

def test_state_file_roundtrip_and_missing(tmp_path):
    path = lc.default_routing_path(tmp_path, "m")
    assert lc.load_routing(path) is None
    s = canary_state(12.5)
    lc.save_routing(path, s)
    back = lc.load_routing(path)
    assert back == s
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".routing-")]


@pytest.mark.parametrize("raw, field", [
    ("{", "not valid JSON"),
    (json.dumps({"model": "m", "primary": "two"}), "primary"),
    (json.dumps({"model": "m", "primary": 1, "canary": 1, "canary_percent": 5}), "canary"),
    (json.dumps({"model": "m", "primary": 1, "canary": 2, "canary_percent": 120}), "canary_percent"),
    (json.dumps({"primary": 1}), "model"),
])
def test_bad_state_file_names_the_field(tmp_path, raw, field):
    path = tmp_path / "routing.json"
    path.write_text(raw)
    with pytest.raises(LifecycleError, match=field):
        lc.load_routing(path)


def test_watcher_picks_up_changes_and_keeps_last_good(tmp_path):
    path = tmp_path / "routing.json"
    now = [0.0]
    w = lc.RoutingWatcher(path, interval=1.0, clock=lambda: now[0])
    assert w.current() is None
    lc.save_routing(path, lc.deploy(RoutingState(model="m"), 1, info(), T0))
    assert w.current() is None  # within the interval: cached
    now[0] = 2.0
    assert w.current().primary == 1
    lc.save_routing(path, lc.promote(canary_state(), T0))
    now[0] = 4.0
    assert w.current().primary == 2
    path.write_text("{broken")
    now[0] = 6.0
    assert w.current().primary == 2  # a torn/bad write never stops routing
    assert w.route("anyone") == 2
