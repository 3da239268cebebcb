"""The tuning cache: one JSON file per key, written atomically, read defensively.

Keyed like a compiler cache by everything that changes the answer (model, GPU model and memory,
link, layout, versions, workload, budget, objective), never by what varies run to run (free
memory, the card's UUID). A damaged entry is ignored with one warning and rewritten by the next
put; a cache that cannot be written never stops the run.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from sglang_autoperf import log
from sglang_autoperf.retune.lists import ListPlacement
from sglang_autoperf.retune.memory import MemoryCorrection
from sglang_autoperf.trace import Placement, StepStats, StepTrace

logger = log.logger()

# Bump when TuningKey/TuningResult change meaning: old entries then miss instead of misleading.
SCHEMA_VERSION = 2


class StaleEntry(ValueError):
    """A well-formed entry of an older cache schema: not damaged, just not comparable."""


@dataclass(frozen=True)
class TuningKey:
    model_fingerprint: str  # configs and tensor shapes, not weights
    gpu_name: str
    gpu_total_memory_bytes: int
    link: str  # e.g. "pcie5x16"
    gpu_count: int
    layout: str  # e.g. "ulysses1-ring1-cfg1-tp1"
    sglang_version: str
    torch_version: str
    lora_adapters: tuple[str, ...] = ()
    batch_size: int = 1
    shape_bucket: str = ""
    # SGLANG_AUTOPERF_VRAM_BUDGET as the user meant it (budget_key): a fraction stays a fraction,
    # never the bytes it meant at one moment's free memory (those would never match again)
    budget: str = ""
    objective: str = "speed"
    pinned_placement: str = ""  # placement flags the user pinned, with values: tuned around them
    plugin_version: str = ""  # a new release or cost model may choose differently: a miss, not a stale hit
    cost_model_version: int = 0

    def __post_init__(self) -> None:
        # order of adapters does not change the answer
        object.__setattr__(self, "lora_adapters", tuple(sorted(str(a) for a in self.lora_adapters)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora_adapters"] = list(self.lora_adapters)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TuningKey":
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise ValueError(f"key fields differ: {sorted(set(d) ^ names)}")
        return cls(**{**d, "lora_adapters": tuple(d["lora_adapters"])})

    def canonical_json(self) -> str:
        return json.dumps({"schema": SCHEMA_VERSION, **self.to_dict()}, sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


@dataclass(frozen=True)
class StepSummary:
    """Median per-step times of a set of traced steps (ms)."""

    step_ms: float
    compute_ms: float
    copy_ms: float
    exposed_ms: float
    steps: int = 0
    monitor_ms: float = 0.0  # the monitor's own host time per traced step (what tracing cost)

    @classmethod
    def of(cls, steps: list[StepTrace]) -> "StepSummary":
        import statistics

        if not steps:
            raise ValueError("no steps")
        med = statistics.median
        return cls(med([s.wall_ms for s in steps]), med([s.compute_ms for s in steps]),
                   med([s.copy_ms for s in steps]), med([s.exposed_ms for s in steps]), len(steps),
                   med([s.monitor_host_ms for s in steps]))


def _number(v: Any, what: str) -> float:
    if type(v) not in (int, float) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} {v!r} is not a finite number >= 0")
    return float(v)


def _whole(v: Any, what: str) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"{what} {v!r} is not a whole number >= 0")
    return v


def _of_type(v: Any, kind: type, what: str) -> Any:
    if not isinstance(v, kind):
        raise ValueError(f"{what} holds {type(v).__name__}, not {kind.__name__}")
    return v


def _numbers(d: Any, what: str, whole: tuple[str, ...] = ()) -> dict[str, Any]:
    """A flat object of numbers (StepStats, StepSummary), the `whole` ones integers."""
    return {k: (_whole(v, f"{what}.{k}") if k in whole else _number(v, f"{what}.{k}"))
            for k, v in _of_type(d, dict, what).items()}


# What a torch.compile check stores as its "placement": the DiT fully resident (no streaming).
RESIDENT_DIT = Placement(0, 0, "resident")
COMPILE_OBJECTIVE = "compile"
OBJECTIVES = ("speed", "memory", COMPILE_OBJECTIVE)


def _list_placement(pairs: Any, what: str) -> list[list[Any]] | None:
    """[list key, placement] pairs, strictly (ListPlacement.from_dict checks keys and placements)."""
    if pairs is None:
        return None
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ValueError(f"{what} {pairs!r} is not a list of [layer list, placement] pairs")
    try:
        placement = ListPlacement.from_dict(dict(pairs))
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{what}: {exc}") from None
    if len(placement.lists) != len(pairs):
        raise ValueError(f"{what} names a layer list twice")
    return [list(pair) for pair in placement.to_dict().items()]


def format_when(created_at) -> str:
    """A cache entry's creation time for log lines (local time, minutes)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(created_at)))
    except (TypeError, ValueError):
        return str(created_at)


@dataclass
class TuningResult:
    placement: Placement  # chosen
    objective: str
    baseline: Placement
    stats: dict[str, StepStats]  # per Placement.label(), measured during calibration
    reason: str
    calibration_s: float
    steps_used: int
    before: StepSummary | None = None  # traced steps under the baseline
    after: StepSummary | None = None  # traced steps under the chosen placement
    # peak allocated in a traced step, chosen placement and start point: what the memory objective
    # compares (the DiT layers on the card, prefetch buffers and the step's activations)
    vram_bytes: int = 0
    baseline_vram_bytes: int | None = None
    traces: list[dict[str, Any]] = field(default_factory=list)  # StepTrace.to_dict(), for the timeline
    created_at: float = field(default_factory=time.time)
    # None: a placement calibration. True/False: a torch.compile check (keep compiled / run eager),
    # stored under objective "compile"; `placement` is then the resident DiT (RESIDENT_DIT).
    compiled: bool | None = None
    # A DiT with several layer lists (FLUX.1 double + single blocks): the chosen and start placement
    # per list as [list key, placement] pairs in execution order (a map would lose the order in the
    # cache's sorted JSON; `placement`/`baseline` then hold the first list's), and the memory
    # measured at the start placement (retune/memory.MemoryCorrection.to_dict).
    list_placement: list[list[Any]] | None = None
    list_baseline: list[list[Any]] | None = None
    memory: dict[str, Any] | None = None
    # Compressed layer streaming (issue 18), measured against raw at the chosen placement:
    # None = not measured (a later start measures it), else what was kept, with the two medians.
    compressed_streaming: bool | None = None
    compression_ms: dict[str, float] | None = None  # {"raw": ..., "compressed": ...}

    def chosen(self) -> "Placement | ListPlacement":
        """What a worker applies: the per-list placement where there is one."""
        return ListPlacement.from_dict(dict(self.list_placement)) if self.list_placement else self.placement

    def started(self) -> "Placement | ListPlacement":
        """The placement the calibration started from, per list where there is one."""
        return ListPlacement.from_dict(dict(self.list_baseline)) if self.list_baseline else self.baseline

    def set_lists(self, chosen: ListPlacement, started: ListPlacement, memory: dict[str, Any] | None) -> None:
        self.list_placement = [list(pair) for pair in chosen.to_dict().items()]
        self.list_baseline = [list(pair) for pair in started.to_dict().items()]
        self.memory = memory

    def to_dict(self) -> dict[str, Any]:
        return {
            "placement": asdict(self.placement),
            "objective": self.objective,
            "baseline": asdict(self.baseline),
            "stats": {k: asdict(v) for k, v in self.stats.items()},
            "reason": self.reason,
            "calibration_s": self.calibration_s,
            "steps_used": self.steps_used,
            "before": asdict(self.before) if self.before else None,
            "after": asdict(self.after) if self.after else None,
            "vram_bytes": self.vram_bytes,
            "baseline_vram_bytes": self.baseline_vram_bytes,
            "traces": list(self.traces),
            "created_at": self.created_at,
            "compiled": self.compiled,
            "list_placement": self.list_placement,
            "list_baseline": self.list_baseline,
            "memory": self.memory,
            "compressed_streaming": self.compressed_streaming,
            "compression_ms": self.compression_ms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TuningResult":
        """Strict: every value of the type and range it was written with; ValueError otherwise (a
        cache file may have been edited or written by another version: a miss, never a guess)."""
        objective = d["objective"]
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
        compiled = d.get("compiled")
        if compiled is not None and type(compiled) is not bool:
            raise ValueError(f"compiled {compiled!r} is not true, false or null")
        baseline_vram = d.get("baseline_vram_bytes")
        compressed = d.get("compressed_streaming")
        if compressed is not None and type(compressed) is not bool:
            raise ValueError(f"compressed_streaming {compressed!r} is not true, false or null")
        compression_ms = d.get("compression_ms")
        return cls(
            placement=Placement.from_dict(d["placement"]),
            objective=objective,
            baseline=Placement.from_dict(d["baseline"]),
            stats={str(k): StepStats(**_numbers(v, "stats", whole=("n",))) for k, v in _of_type(d["stats"], dict, "stats").items()},
            reason=_of_type(d["reason"], str, "reason"),
            calibration_s=_number(d["calibration_s"], "calibration_s"),
            steps_used=_whole(d["steps_used"], "steps_used"),
            before=StepSummary(**_numbers(d["before"], "before", whole=("steps",))) if d.get("before") else None,
            after=StepSummary(**_numbers(d["after"], "after", whole=("steps",))) if d.get("after") else None,
            vram_bytes=_whole(d.get("vram_bytes", 0), "vram_bytes"),
            baseline_vram_bytes=None if baseline_vram is None else _whole(baseline_vram, "baseline_vram_bytes"),
            traces=[_of_type(t, dict, "traces") for t in _of_type(d.get("traces") or [], list, "traces")],
            created_at=_number(d.get("created_at", 0.0), "created_at"),
            compiled=compiled,
            list_placement=_list_placement(d.get("list_placement"), "list_placement"),
            list_baseline=_list_placement(d.get("list_baseline"), "list_baseline"),
            memory=None if d.get("memory") is None else MemoryCorrection.from_dict(d["memory"]).to_dict(),
            compressed_streaming=compressed,
            compression_ms=None if compression_ms is None else _numbers(compression_ms, "compression_ms"),
        )

    @classmethod
    def from_calibration(
        cls, *, placement: Placement, baseline: Placement, objective: str, reason: str,
        stats: dict[str, StepStats], calibration_s: float, steps_used: int,
        before: list[StepTrace], after: list[StepTrace], vram_bytes: int = 0,
        baseline_vram_bytes: int | None = None, keep_traces: int = 2,
    ) -> "TuningResult":
        """From the traced steps of a calibration; keeps the last `keep_traces` steps of each
        side for the timeline (a cache entry stays small)."""
        kept = (before[-keep_traces:] + (after[-keep_traces:] if after is not before else [])) if keep_traces > 0 else []
        return cls(
            placement=placement, objective=objective, baseline=baseline, stats=dict(stats), reason=reason,
            calibration_s=float(calibration_s), steps_used=int(steps_used),
            before=StepSummary.of(before) if before else None,
            after=StepSummary.of(after) if after else None,
            vram_bytes=int(vram_bytes), baseline_vram_bytes=baseline_vram_bytes,
            traces=[json.loads(json.dumps(t.to_dict())) for t in kept],  # plain JSON types: equal after a round trip
        )

    def step_traces(self) -> list[StepTrace]:
        return [StepTrace.from_dict(t) for t in self.traces]


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    key: TuningKey
    result: TuningResult
    written_at: float


class TuningCache:
    def __init__(self, directory: Path | str | None = None) -> None:
        if directory is None:
            from sglang_autoperf.settings import default_cache_dir

            directory = default_cache_dir()
        self.directory = Path(directory)
        self._warned: set[str] = set()

    def path_for(self, key: TuningKey) -> Path:
        return self.directory / f"{key.digest()}.json"

    def _warn_once(self, what: str, message: str) -> None:
        if what in self._warned:
            return
        self._warned.add(what)
        logger.warning("[autoperf] %s", message)

    def _load(self, path: Path) -> CacheEntry:
        """Raises on anything short of a well-formed entry of this schema."""
        doc = json.loads(path.read_bytes().decode("utf-8"))
        schema = doc.get("schema") if isinstance(doc, dict) else None
        if isinstance(schema, int) and 0 < schema < SCHEMA_VERSION:
            raise StaleEntry(f"written by an older sglang-autoperf (cache schema {schema}, now {SCHEMA_VERSION}); "
                             f"that shape is measured again")
        if schema != SCHEMA_VERSION:
            raise ValueError(f"schema {schema!r}, expected {SCHEMA_VERSION}")
        key = TuningKey.from_dict(doc["key"])
        if path.name != f"{key.digest()}.json":
            raise ValueError("file name does not match its key")
        return CacheEntry(path, key, TuningResult.from_dict(doc["result"]), float(doc["written_at"]))

    def get(self, key: TuningKey) -> TuningResult | None:
        path = self.path_for(key)
        try:
            entry = self._load(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self._warn_once(str(path), f"could not read tuning cache entry {path} ({type(exc).__name__}: {exc})")
            return None
        except StaleEntry as exc:
            self._warn_once(str(path), f"tuning cache entry {path} not used: {exc}")
            return None
        except Exception as exc:  # corrupt, truncated, foreign schema: a miss
            self._warn_once(str(path), f"ignoring damaged tuning cache entry {path} "
                                       f"({type(exc).__name__}: {exc}); it will be rewritten")
            return None
        if entry.key != key:
            return None
        return entry.result

    def put(self, key: TuningKey, result: TuningResult) -> bool:
        """Atomic write (temp file in the same directory, fsync, os.replace): a concurrent reader
        sees the old file or the new one, never a torn one. False (with a warning) if it failed."""
        path = self.path_for(key)
        doc = {"schema": SCHEMA_VERSION, "key": key.to_dict(), "result": result.to_dict(),
               "written_at": time.time()}
        tmp = None
        try:
            data = json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=".tmp", dir=self.directory)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
            self._warned.discard(str(path))
            return True
        except Exception as exc:
            self._warn_once(f"put:{self.directory}", f"could not write the tuning cache in {self.directory} "
                                                    f"({type(exc).__name__}: {exc}); the run continues uncached")
            return False
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def _iter_entries(self) -> Iterator[CacheEntry]:
        try:
            paths = sorted(self.directory.glob("*.json"))
        except OSError:
            return
        for path in paths:
            try:
                yield self._load(path)
            except StaleEntry as exc:
                self._warn_once(str(path), f"tuning cache entry {path} not shown: {exc}")
            except Exception as exc:
                self._warn_once(str(path), f"ignoring damaged tuning cache entry {path} "
                                           f"({type(exc).__name__}: {exc})")

    def entries(self) -> list[tuple[TuningKey, TuningResult]]:
        """Every readable entry, oldest first."""
        return [(e.key, e.result) for e in sorted(self._iter_entries(), key=lambda e: e.written_at)]

    def latest_entry(self) -> CacheEntry | None:
        return max(self._iter_entries(), key=lambda e: e.written_at, default=None)

    def latest(self) -> tuple[TuningKey, TuningResult] | None:
        e = self.latest_entry()
        return (e.key, e.result) if e else None


def shape_bucket(width: int, height: int, num_frames: int, batch_size: int, cfg: bool) -> str:
    """Requests in one bucket share a tuned placement (per-step cost depends on exactly these)."""
    return f"{width}x{height}x{num_frames}f_b{batch_size}_cfg{int(bool(cfg))}"


def budget_key(text: str | None) -> str:
    """The budget as a key: an amount in bytes ('24GiB' and '24576MiB' are one key), a fraction
    as such ('0.5 of free'). Raises BudgetError on text the plugin would refuse anyway."""
    if not text:
        return ""
    from sglang_autoperf.plan.budget import parse_vram_budget

    # A fraction scales with the free memory it is applied to; an amount does not.
    small, large = parse_vram_budget(text, 1 << 40), parse_vram_budget(text, 1 << 41)
    return f"{small} bytes" if small == large else f"{float(text):g} of free"


def tuning_key(*, fingerprint: str, gpu_key: dict[str, Any], identity: dict[str, Any], bucket: str,
               batch_size: int, budget: str | None, objective: str) -> TuningKey:
    """The one place a key is built, from the plan (main process) or the worker's view of it;
    `identity` is the adapter's worker_identity of the final ServerArgs, `budget` the user's text."""
    from sglang_autoperf import __version__
    from sglang_autoperf.plan.cost import COST_MODEL_VERSION

    return TuningKey(
        model_fingerprint=fingerprint,
        gpu_name=str(gpu_key.get("name", "")),
        gpu_total_memory_bytes=int(gpu_key.get("memory_total_bytes", 0)),
        link=str(gpu_key.get("link", "")),
        gpu_count=int(identity["num_gpus"]),
        layout=str(identity["layout"]),
        sglang_version=str(identity["sglang_version"]),
        torch_version=str(identity["torch_version"]),
        lora_adapters=tuple(identity.get("lora", ())),
        batch_size=int(batch_size),
        shape_bucket=bucket,
        budget=budget_key(budget),
        objective=objective,
        pinned_placement=str(identity.get("pinned_placement", "")),
        plugin_version=__version__,
        cost_model_version=COST_MODEL_VERSION,
    )
