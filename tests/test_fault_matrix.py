"""The fault matrix: every upload mode against every fault the local server can inject.

Each cell is one combination of ``if_exists`` mode, input kind (DataFrame or Dataset),
``max_workers``, fault and the chunk the fault hits (first, middle or last). In every cell
the upload either completes with every row stored exactly once, or raises
:class:`~atomscale_accessors.errors.UploadError` that accounts for every row, after which
a re-run with ``if_exists="skip"`` leaves every row stored exactly once.

By default a quarter of the cells run, chosen so that each fault still meets every mode,
every chunk position and every (input, max_workers) pair; ``ATOMSCALE_FULL_MATRIX=1`` runs
the whole product, as CI does after the suite. The matrix is printed at the end of the
module (through pytest's terminal reporter, so it shows without ``-s``).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import HAS_SERVER, NO_SERVER, THICKNESS_MAPPING

if not HAS_SERVER:
    pytest.skip(NO_SERVER, allow_module_level=True)


from atomscale_accessors import Client, RetryPolicy
from atomscale_accessors.errors import AnnotationExistsError, UploadError
from atomscale_accessors.maps import flatten_map
from atomscale_accessors.records import to_records
from atomscale_accessors.server import LocalServer

NX, NY = 6, 4  # 24 points
CHUNK = 4
PRESTORED = (1, 8, 14, 22)  # rows stored before the upload in the skip and update modes
MAPPING = THICKNESS_MAPPING
DEFAULT_LIMITS = {"max_bulk_annotations": 50_000, "max_body_bytes": 64 * 2**20}

FAST = RetryPolicy(max_attempts=4, backoff=0.01, max_wait=0.5, settle=0.05)
# A refused connection is retried until the server is back: ~2.2 s of retries in all, well
# beyond the 0.2 s outage (stopping the server waits for requests in flight first).
PATIENT = RetryPolicy(max_attempts=8, backoff=0.05, max_wait=0.5, settle=0.05)
READ_TIMEOUT = 0.15
LATENCY = 0.3
# After a read timeout the upload waits ``settle`` before listing what landed; a late
# commit lands LATENCY after its request arrived, i.e. LATENCY - READ_TIMEOUT after the
# timeout.
SLOW = RetryPolicy(max_attempts=4, backoff=0.01, max_wait=2.0, settle=LATENCY + 0.1)
OUTAGE = 0.2
# Both 429 cells use one policy, with a tiny backoff and room for Retry-After: only the
# header can make the upload wait long.
RETRY_AFTER = 1  # whole seconds, all the header can say
HEEDFUL = RetryPolicy(max_attempts=4, backoff=0.01, max_wait=2.0, settle=0.05)


@dataclass(frozen=True)
class Fault:
    """One fault of the matrix: what to inject (or ``outage``), and the client to use."""

    label: str
    inject: dict[str, Any] = field(default_factory=dict)
    policy: RetryPolicy = FAST
    timeout: tuple[float, float] = (5.0, 30.0)
    outage: float | None = None  # seconds the server is down; inf: until the upload ends
    # Seconds a commit may still land after the upload returned (a request the client
    # gave up on), waited before the stored data is checked.
    lands_within: float = 0.0
    # Seconds the server asked to wait per 429 (the upload must take at least that) and
    # seconds the upload must take at most; None: no bound.
    asks_to_wait: float = 0.0
    within: float | None = None


FAULTS = {
    # A request caught by the server's stop can be left unanswered: a short read timeout
    # makes that an ambiguous failure within seconds instead of the matrix's usual 30.
    "refused-then-accepted": Fault(
        "connection refused, then accepted", policy=PATIENT, outage=OUTAGE, timeout=(5.0, 2.0)
    ),
    "refused-throughout": Fault(
        "connection refused until the upload gives up", outage=math.inf, timeout=(5.0, 2.0)
    ),
    "latency": Fault(
        f"read timeout {READ_TIMEOUT} s, nothing stored",
        {"kind": "latency", "seconds": LATENCY},
        policy=SLOW,
        timeout=(5.0, READ_TIMEOUT),
    ),
    # The commit lands after the client gave up: an upload that lists what landed without
    # waiting for it sends the chunk again, and the late commit doubles it.
    "late-commit": Fault(
        f"read timeout {READ_TIMEOUT} s, commit {LATENCY} s late",
        {"kind": "latency_before_commit", "seconds": LATENCY},
        policy=SLOW,
        timeout=(5.0, READ_TIMEOUT),
        lands_within=LATENCY,
    ),
    "late-answer": Fault(
        f"read timeout {READ_TIMEOUT} s, stored, answer {LATENCY} s late",
        {"kind": "latency_after_commit", "seconds": LATENCY},
        policy=SLOW,
        timeout=(5.0, READ_TIMEOUT),
    ),
    "429-retry-after": Fault(
        "429 with Retry-After",
        {"kind": "rate_limited", "retry_after": RETRY_AFTER, "times": 2},
        policy=HEEDFUL,
        asks_to_wait=RETRY_AFTER,
    ),
    "429": Fault(
        "429 without Retry-After",
        {"kind": "rate_limited", "times": 2},
        policy=HEEDFUL,
        within=RETRY_AFTER,
    ),
    "503": Fault("503", {"kind": "error_before_commit", "status": 503, "times": 2}),
    "503-exhausted": Fault(
        "503 until retries run out", {"kind": "error_before_commit", "status": 503, "times": 1000}
    ),
    "413": Fault("413", {"kind": "error_before_commit", "status": 413}),
    "500-before": Fault("500 before commit", {"kind": "error_before_commit", "status": 500}),
    "502-before": Fault("502 before commit", {"kind": "error_before_commit", "status": 502}),
    "504-before": Fault("504 before commit", {"kind": "error_before_commit", "status": 504}),
    "500-after": Fault("500 after commit", {"kind": "error_after_commit", "status": 500}),
    "drop-after": Fault("connection dropped after commit", {"kind": "drop_after_commit"}),
    "drop-before": Fault("connection dropped before commit", {"kind": "drop_before_commit"}),
}
MODES = ("fail", "skip", "append", "update")
# The whole product runs when this variable is 1 (CI runs it after the suite); otherwise a
# quarter of it that still covers each pair of dimensions (see cells()).
FULL_MATRIX_VARIABLE = "ATOMSCALE_FULL_MATRIX"
FULL = os.environ.get(FULL_MATRIX_VARIABLE) == "1"
INPUTS = ("dataframe", "dataset")
WORKERS = (1, 4)
POSITIONS = ("first", "middle", "last")

# (mode, input, workers, fault, position) -> outcome, filled by the tests.
MATRIX: dict[tuple[str, str, int, str, str], str] = {}


# -- inputs ---------------------------------------------------------------------------------
def measurement_frame() -> pd.DataFrame:
    """24 thickness points on a 6 x 4 grid, with the user's own labels and column names."""
    rng = np.random.default_rng(42)
    x = np.tile(np.linspace(-25.0, 25.0, NX), NY)
    y = np.repeat(np.linspace(-15.0, 15.0, NY), NX)
    thk = 100.0 + rng.normal(0.0, 1.0, NX * NY) / 3.0
    index = pd.Index([f"site-{i:02d}" for i in range(NX * NY)], name="site")
    return pd.DataFrame({"x_mm": x, "y_mm": y, "thk": thk}, index=index)


def measurement_map() -> xr.Dataset:
    """The same points as a (y, x) grid."""
    df = measurement_frame()
    return xr.Dataset(
        {"thickness": (("y", "x"), df["thk"].to_numpy().reshape(NY, NX), {"units": "nm"})},
        coords={
            "x": ("x", df["x_mm"].to_numpy()[:NX], {"units": "mm"}),
            "y": ("y", df["y_mm"].to_numpy()[::NX], {"units": "mm"}),
        },
    )


def make_input(kind: str) -> tuple[pd.DataFrame | xr.Dataset, pd.DataFrame]:
    """The input object and its canonical records."""
    if kind == "dataframe":
        df = measurement_frame()
        return df, to_records(df, **MAPPING)
    ds = measurement_map()
    return ds, flatten_map(ds)


def upload(obj: pd.DataFrame | xr.Dataset, sample_id: str, **options: Any) -> pd.DataFrame:
    options.setdefault("progress", False)
    if isinstance(obj, pd.DataFrame):
        return obj.atomscale.upload(sample_id, **options, **MAPPING)
    return obj.atomscale.upload(sample_id, **options)


def prestore(server: LocalServer, sample_id: str, records: pd.DataFrame, shift: float) -> None:
    """Store some records directly in the server's database (no request is counted)."""
    bodies = []
    for i in PRESTORED:
        row = records.iloc[i]
        bodies.append(
            {
                "property_name": row["property_name"],
                "property_value": float(row["property_value"]) + shift,
                "property_unit": row["property_unit"],
                "coord_ref_frame": row["coord_ref_frame"],
                "coord_units": row["coord_units"],
                "coord_x": float(row["coord_x"]),
                "coord_y": float(row["coord_y"]),
            }
        )
    server.store.create_annotations(sample_id, bodies)


# -- checks ---------------------------------------------------------------------------------
def stored_by_position(server: LocalServer, sample_id: str) -> dict[tuple, list[float]]:
    out: dict[tuple, list[float]] = {}
    for obj in server.stored_annotations(sample_id):
        key = (obj["property_name"], obj["coord_x"], obj["coord_y"])
        out.setdefault(key, []).append(obj["property_value"])
    return out


def assert_exactly_once(
    server: LocalServer,
    sample_id: str,
    records: pd.DataFrame,
    *,
    stale: dict[tuple, float] | None = None,
) -> None:
    """Each record stored once with its value (or its ``stale`` pre-stored value), no more."""
    stored = stored_by_position(server, sample_id)
    expected = {
        (row.property_name, row.coord_x, row.coord_y): row.property_value
        for row in records.itertuples()
    }
    doubled = {k: v for k, v in stored.items() if len(v) > 1}
    assert not doubled, f"stored more than once: {doubled}"
    missing = set(expected) - set(stored)
    assert not missing, f"never stored: {sorted(missing)}"
    extra = set(stored) - set(expected)
    assert not extra, f"stored but not in the input: {sorted(extra)}"
    for key, value in expected.items():
        allowed = {value} | ({stale[key]} if stale and key in stale else set())
        assert stored[key][0] in allowed, f"{key}: stored {stored[key][0]!r}, sent {value!r}"
    assert server.annotation_count(sample_id) == len(records)


def assert_accounts_for_every_row(err: UploadError, server: LocalServer, sample_id: str, n: int):
    """``created``, ``not_created``, ``not_updated`` and ``unknown`` partition the rows."""
    parts = {
        "created": err.created,
        "not_created": err.not_created,
        "not_updated": err.not_updated,
        "unknown": err.unknown,
    }
    sizes = {name: len(part) for name, part in parts.items()}
    assert sum(sizes.values()) == n, f"{sizes} do not add up to the {n} rows sent"
    labels = [label for part in parts.values() for label in part.index]
    assert len(set(labels)) == len(labels), f"a row is in two groups: {sizes}"
    created = err.created
    ids = {obj["id"] for obj in server.stored_annotations(sample_id)}
    assert set(created["annotation_id"]) <= ids, "UploadError.created names unstored annotations"
    assert created["annotation_id"].is_unique
    stored = stored_by_position(server, sample_id)
    wrongly = [
        (r.property_name, r.coord_x, r.coord_y)
        for r in err.not_created.itertuples()
        if (r.property_name, r.coord_x, r.coord_y) in stored
    ]
    assert not wrongly, f"UploadError.not_created names stored records: {wrongly}"


# -- the outage: the server goes down just before a chosen bulk request --------------------
class OutageClient(Client):
    """A client that stops the server right before its n-th bulk request is sent.

    The request itself still goes over the network, and is refused; the server comes back
    ``outage`` seconds later (or, for ``inf``, when the test starts it again).
    """

    def __init__(self, server: LocalServer, at: int, outage: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server = server
        self._at = at
        self._outage = outage
        self._seen = 0
        self._gate = threading.Lock()
        self.timer: threading.Timer | None = None
        self.fired = False

    def request(self, method: str, path: str, **kwargs: Any):  # type: ignore[override]
        if method == "POST" and path.endswith("/bulk"):
            with self._gate:
                self._seen += 1
                if self._seen == self._at + 1 and not self.fired:
                    self.fired = True
                    self._server.stop()
                    if math.isfinite(self._outage):
                        self.timer = threading.Timer(self._outage, self._server.start)
                        self.timer.start()
        return super().request(method, path, **kwargs)


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(request) -> Iterator[LocalServer]:
    srv = LocalServer()
    with srv:
        yield srv
    srv.close()
    # Shown past pytest's output capture, so the matrix is visible without -s.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n" + format_matrix(), flush=True)
    else:  # pragma: no cover - run without pytest's capture plugin
        print("\n" + format_matrix())


@pytest.fixture
def fresh(server) -> Iterator[LocalServer]:
    """The module's server, running, without faults, with default limits and zero counters."""
    if not server.running:
        server.start()
    server.clear_faults()
    server.set_limits(**DEFAULT_LIMITS)
    server.reset_counters()
    yield server
    if not server.running:
        server.start()
    server.clear_faults()


def n_to_send(mode: str) -> int:
    return NX * NY - (len(PRESTORED) if mode in ("skip", "update") else 0)


def fault_position(mode: str, position: str) -> int:
    """How many bulk requests go through before the fault hits."""
    chunks = math.ceil(n_to_send(mode) / CHUNK)
    return {"first": 0, "middle": chunks // 2, "last": chunks - 1}[position]


# -- the matrix -----------------------------------------------------------------------------
def cells(full: bool) -> list[Any]:
    """The cells to run: all of them, or a quarter that still covers every fault with every
    mode, every chunk position and every (input, max_workers) pair.

    The quarter keeps each (mode, fault, position) and gives it one (input, workers) pair,
    turning with the mode: over the four modes, each fault and position meets all four.
    """
    chosen = []
    for mode, kind, workers, fault, position in itertools.product(
        MODES, INPUTS, WORKERS, FAULTS, POSITIONS
    ):
        pair = INPUTS.index(kind) * len(WORKERS) + WORKERS.index(workers)
        turn = MODES.index(mode) + POSITIONS.index(position) + list(FAULTS).index(fault)
        if full or pair == turn % (len(INPUTS) * len(WORKERS)):
            cell_id = f"{mode}-{kind}-w{workers}-{fault}-{position}"
            chosen.append(pytest.param(mode, kind, workers, fault, position, id=cell_id))
    return chosen


@pytest.mark.parametrize(("mode", "kind", "workers", "fault", "position"), cells(FULL))
def test_fault_matrix(fresh, caplog, mode, kind, workers, fault, position):
    server = fresh
    spec = FAULTS[fault]
    caplog.set_level(logging.INFO, logger="atomscale_accessors")
    obj, records = make_input(kind)
    before = obj.copy(deep=True)
    sample_id = server.create_sample(f"{mode}-{kind}-{workers}-{fault}-{position}")

    stale: dict[tuple, float] = {}
    if mode in ("skip", "update"):
        # Part of the rows are stored already: the mode decides what happens to them.
        shift = -1.0 if mode == "update" else 0.0
        prestore(server, sample_id, records, shift)
        stale = {
            (r.property_name, r.coord_x, r.coord_y): r.property_value + shift
            for r in records.iloc[list(PRESTORED)].itertuples()
        }
    sent_rows = records if mode != "skip" else records.drop(records.index[list(PRESTORED)])

    after = fault_position(mode, position)
    options = {"api_key": server.api_key, "endpoint": server.endpoint}
    client: Client
    if spec.outage is not None:
        client = OutageClient(
            server, after, spec.outage, retry=spec.policy, timeout=spec.timeout, **options
        )
    else:
        client = Client(retry=spec.policy, timeout=spec.timeout, **options)
        server.inject(route="bulk_create", after=after, **spec.inject)

    started = time.perf_counter()
    try:
        created = upload(
            obj, sample_id, client=client, if_exists=mode, chunksize=CHUNK, max_workers=workers
        )
    except UploadError as exc:
        err = exc
    else:
        err = None
    finally:
        elapsed = time.perf_counter() - started
        if isinstance(client, OutageClient):
            if client.timer is not None:
                client.timer.join()
            if not server.running:
                server.start()
    time.sleep(spec.lands_within)

    # The client waited as long as the server asked: each 429 in turn with one worker,
    # at least one with several (they may wait out two 429s side by side).
    times = spec.inject.get("times", 1)
    least = spec.asks_to_wait * (times if workers == 1 else 1)
    assert elapsed >= least, f"{elapsed:.2f} s: the upload did not wait {least} s as asked"
    if spec.within is not None:
        # Every wait the upload took was the policy's short backoff (read from its log:
        # the clock would also count the machine's load).
        waits = [r.args[0] for r in caplog.records if r.msg.startswith("retrying in")]
        assert waits, "the upload retried nothing"
        assert max(waits) < spec.within, f"waited {max(waits)} s with no wait asked for"

    # The fault did hit the upload.
    if isinstance(client, OutageClient):
        assert client.fired
    elif times < 100:
        assert server.faults.pending() == []

    if err is None:
        outcome = "completed"
        assert created.index.equals(sent_rows.index), "the result is not aligned to the input"
        assert created["annotation_id"].is_unique
        np.testing.assert_array_equal(
            created["property_value"].to_numpy(), sent_rows["property_value"].to_numpy()
        )
        assert_exactly_once(server, sample_id, records)
        if mode == "update":
            # One PATCH per stored row; more only where a slow machine made one time out and
            # it was sent again (PATCH is idempotent, so that is allowed).
            assert server.request_count("update_annotation") >= len(PRESTORED)
    else:
        rows = n_to_send(mode) + (len(PRESTORED) if mode == "update" else 0)
        assert_accounts_for_every_row(err, server, sample_id, rows)
        assert "if_exists='skip'" in str(err)
        server.clear_faults()
        upload(obj, sample_id, client=Client(retry=FAST, **options), if_exists="skip")
        # Rows the update never reached keep their pre-stored value.
        assert_exactly_once(server, sample_id, records, stale=stale if mode == "update" else None)
        outcome = f"{type(err).__name__}, then skip completed"
    if isinstance(obj, pd.DataFrame):
        pd.testing.assert_frame_equal(obj, before)
    else:
        xr.testing.assert_identical(obj, before)
    MATRIX[(mode, kind, workers, fault, position)] = outcome


@pytest.mark.parametrize("workers", WORKERS, ids=lambda w: f"w{w}")
@pytest.mark.parametrize("kind", INPUTS)
def test_fail_mode_with_a_stored_clash_sends_nothing(fresh, kind, workers):
    server = fresh
    obj, records = make_input(kind)
    sample_id = server.create_sample(f"clash-{kind}-{workers}")
    prestore(server, sample_id, records, 0.0)
    with pytest.raises(AnnotationExistsError) as info:
        upload(
            obj,
            sample_id,
            client=Client(api_key=server.api_key, endpoint=server.endpoint, retry=FAST),
            if_exists="fail",
            chunksize=CHUNK,
            max_workers=workers,
        )
    assert server.request_count("bulk_create") == 0
    assert server.request_count("update_annotation") == 0
    assert sorted(info.value.existing.index) == sorted(records.index[list(PRESTORED)])
    assert f"{len(PRESTORED)} records are already stored" in str(info.value)
    assert server.annotation_count(sample_id) == len(PRESTORED)


# -- the printed matrix ---------------------------------------------------------------------
def format_matrix() -> str:
    if not MATRIX:
        return "fault matrix: no cell ran"
    width = max(len(f.label) for f in FAULTS.values())
    outcomes = sorted({v for v in MATRIX.values()})
    short = {o: ("ok" if o == "completed" else "err>skip ok") for o in outcomes}
    header = f"{'mode':<7}{'input':<10}{'workers':<8}{'fault':<{width + 2}}" + "".join(
        f"{p:<12}" for p in POSITIONS
    )
    lines = [
        "fault matrix (if_exists x input x max_workers x fault x chunk hit"
        + ("" if FULL else f"; a quarter of it, {FULL_MATRIX_VARIABLE}=1 runs all")
        + "):",
        "  ok = completed, every row stored exactly once;",
        "  err>skip ok = UploadError accounting for every row, then a re-run with "
        "if_exists='skip' stored every row exactly once;",
        "  -- = not run",
        header,
        "-" * len(header),
    ]
    for mode in MODES:
        for kind in INPUTS:
            for workers in WORKERS:
                for key, fault in FAULTS.items():
                    cells = [MATRIX.get((mode, kind, workers, key, p)) for p in POSITIONS]
                    if not any(cells):
                        continue
                    lines.append(
                        f"{mode:<7}{kind:<10}{workers:<8}{fault.label:<{width + 2}}"
                        + "".join(f"{short.get(c, '--') if c else '--':<12}" for c in cells)
                    )
    counts = pd.Series(list(MATRIX.values())).value_counts()
    lines.append("-" * len(header))
    lines.extend(f"{n:5d} cells: {outcome}" for outcome, n in counts.items())
    return "\n".join(lines)
