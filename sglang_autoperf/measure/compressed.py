"""Compressed layer streaming (issue 18): a worker's offloaded bf16 layers held in host memory in
the exponent codec's bytes (kernels/exponent_codec: ~0.75 of bf16, lossless) and decoded on
sglang's copy stream straight into the layer's device buffer, so the prefetch event sglang's
pre-hook already waits on covers the decode as well.

A manager's layers are encoded once (on the GPU, layer by layer) while sglang's raw host buffers
are still there. Until the choice is made (`commit`), both stay: `set_active` switches every
prefetch between the two at no cost, since a decoded layer is bit for bit the raw one (the live
A/B and the in-process sweep measure both in one process). `commit(True)` drops the raw buffers
(the host memory saved); `commit(False)` drops the compressed ones. After a commit to
compression, any sglang method that reads the raw host buffers (weight updates, checksums,
disable_offload's write-back) first gets them back, decoded, and compression ends for that
manager (one log line): the store never changes what sglang computes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sglang_autoperf.log import logger
from sglang_autoperf.probe.host import probe_host
from sglang_autoperf.sglang_adapter import contract as sa
from sglang_autoperf.units import gib

# Beyond what both stores hold while undecided, the host keeps this much (sglang's other
# components, the page cache the checkpoint loads through).
HOST_MARGIN_BYTES = 4 << 30
# What the codec leaves of bf16 on random N(0, 0.02) blocks and heavy-tailed tensors: 0.751-0.771
# (benchmarks/results/2026-11-29-h200-kernels/); the host-memory check assumes the worst.
EXPECTED_RATIO = 0.78


@dataclass
class StoreReport:
    layers: int = 0  # layers held compressed
    raw_bytes: int = 0  # their bf16 bytes
    compressed_bytes: int = 0  # their packed bytes
    kept_raw: dict[str, int] = field(default_factory=dict)  # reason -> layers
    encode_s: float = 0.0
    pinned: bool = False

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / self.raw_bytes if self.raw_bytes else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "raw_bytes": self.raw_bytes, "compressed_bytes": self.compressed_bytes,
                "ratio": round(self.ratio, 4), "kept_raw": dict(self.kept_raw), "encode_s": round(self.encode_s, 2),
                "pinned": self.pinned}


def _codec():
    from sglang_autoperf.kernels import exponent_codec

    return exponent_codec


def streaming_unavailable(device) -> str | None:
    """Why the decoder cannot run for layers on `device` (None: it can)."""
    from sglang_autoperf.kernels import exponent_triton

    if getattr(device, "type", str(device)) == "cuda" or exponent_triton.interpreted():
        problems = sa.streaming_problems()
        return "; ".join(problems) if problems else None
    return f"the Triton decoder runs on CUDA devices, not {device}"


class CompressedLayers:
    """One LayerwiseOffloadManager's bf16 layers in the codec's bytes."""

    def __init__(self, manager):
        import torch

        self.manager = manager
        self.dtype = torch.bfloat16
        self.packed: dict[int, tuple[Any, Any]] = {}  # layer -> (host uint8 buffer, PackedLayout)
        self.raw: dict[int, Any] = {}  # layer -> sglang's raw host buffer, until commit
        self.active = False
        self.committed: bool | None = None
        self.report = StoreReport()
        self._undo_guard = None

    def build(self) -> StoreReport:
        import torch

        codec, t0 = _codec(), time.perf_counter()
        device = sa.manager_device(self.manager)
        for layer, raw in sa.manager_flat_host_buffers(self.manager, self.dtype).items():
            source = raw.to(device) if device.type == "cuda" else raw
            rec = codec.encode(source)
            if isinstance(rec, codec.KeptRaw):
                reason = rec.reason.split(":")[0]
                self.report.kept_raw[reason] = self.report.kept_raw.get(reason, 0) + 1
                continue
            layout = codec.packed_layout(rec)
            staged = torch.empty(layout.nbytes, dtype=torch.uint8, device=source.device)
            codec.pack_into(rec, staged)
            host = _host_buffer(layout.nbytes, torch.uint8, raw.is_pinned())
            host.copy_(staged)
            del source, rec, staged  # the next layer's temporaries are not added to these
            self.packed[layer], self.raw[layer] = (host, layout), raw
            self.report.layers += 1
            self.report.raw_bytes += raw.numel() * raw.element_size()
            self.report.compressed_bytes += layout.nbytes
            self.report.pinned = self.report.pinned or raw.is_pinned()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        self.report.encode_s = time.perf_counter() - t0
        if self.packed:
            sa.wrap_manager_prefetch(self.manager, self._prefetch_wrapper)
        return self.report

    def host_bytes(self) -> int:
        """Host bytes the streamed bf16 layers take now (raw and compressed while undecided)."""
        raw = sum(b.numel() * b.element_size() for b in self.raw.values())
        return raw + sum(layout.nbytes for _, layout in self.packed.values())

    # -- the prefetch ---------------------------------------------------------------------------

    def _prefetch_wrapper(self, original):
        manager, fills = self.manager, {}

        def prefetch_layer(layer_idx, non_blocking=True):
            entry = self.packed.get(layer_idx) if self.active else None
            if entry is None or not sa.manager_layer_needs_copy(manager, layer_idx):
                return original(manager, layer_idx, non_blocking)
            fills[self.dtype] = lambda: self._decode(entry, non_blocking)
            try:
                return sa.prefetch_layer_filling(manager, layer_idx, non_blocking, fills)
            except Exception as exc:
                if is_oom(exc):  # the staging buffer did not fit: once more, the allocator's cache freed
                    _empty_device_cache()
                    return sa.prefetch_layer_filling(manager, layer_idx, non_blocking, fills)
                self._step_aside(exc)  # ours failed: this manager streams raw from now on
                return original(manager, layer_idx, non_blocking)

        return prefetch_layer

    def _step_aside(self, exc: BaseException) -> None:
        """A failure of the compressed path: sglang's raw buffers in use again (restored if dropped;
        if even that fails, the error is sglang's to see), one line."""
        logger().warning("[autoperf] compressed streaming of %s failed (%s: %s); it streams raw from now on",
                         sa.manager_layer_list_name(self.manager), type(exc).__name__, str(exc)[:200])
        if self.committed:
            self.restore_raw()
        self.packed.clear()
        self.raw.clear()
        self.active, self.committed = False, False

    def _decode(self, entry, non_blocking: bool):
        """The layer's bf16 device buffer: its packed bytes copied over, then decoded (copy stream)."""
        import torch

        codec = _codec()
        host, layout = entry
        device = sa.manager_device(self.manager)
        staged = torch.empty(layout.nbytes, dtype=torch.uint8, device=device)
        staged.copy_(host, non_blocking=non_blocking)
        out = torch.empty(layout.numel, dtype=layout.dtype, device=device)
        return codec.decode_into(codec.from_packed(staged, layout), out)

    def mismatched_layers(self, only: tuple[int, ...] | None = None) -> list[int]:
        """Layers (all, or `only` these) whose decoded buffer differs from sglang's raw one in any
        bit (while both are held)."""
        import torch

        device = sa.manager_device(self.manager)
        return [layer for layer, entry in self.packed.items() if layer in self.raw and (only is None or layer in only)
                and not torch.equal(self._decode(entry, False).view(torch.int16),
                                    self.raw[layer].to(device).view(torch.int16))]

    # -- the choice -----------------------------------------------------------------------------

    def commit(self, compressed: bool) -> None:
        """Keep one store: the compressed one (sglang's raw buffers are dropped) or the raw one."""
        if self.committed is not None:
            return
        self.committed, self.active = compressed, compressed
        if not compressed:
            self.packed.clear()
            self.raw.clear()
            return
        for layer in self.packed:
            sa.set_manager_flat_host_buffer(self.manager, layer, self.dtype, None)
        self.raw.clear()
        self._undo_guard = sa.guard_host_store_methods(self.manager, self.restore_raw)

    def restore_raw(self) -> None:
        """sglang's raw host buffers back, decoded from the store (bit for bit the originals); the
        manager streams raw from now on."""
        import torch

        if not self.packed:
            return
        codec, device = _codec(), sa.manager_device(self.manager)
        for layer, (host, layout) in list(self.packed.items()):
            rec = codec.from_packed(host.to(device), layout)
            raw = _host_buffer(layout.numel, layout.dtype, host.is_pinned())
            raw.copy_(codec.decode_into(rec, torch.empty(layout.numel, dtype=layout.dtype, device=device)))
            sa.set_manager_flat_host_buffer(self.manager, layer, self.dtype, raw)
        self.packed.clear()
        self.active = False
        if self._undo_guard is not None:
            self._undo_guard()
            self._undo_guard = None
        logger().info("[autoperf] %s: raw host buffers restored for sglang (compressed streaming off for it)",
                      sa.manager_layer_list_name(self.manager))


class CompressedStreaming:
    """Every offloaded layer list of one worker, compressed together."""

    def __init__(self, managers: dict[str, list]):
        self.stores = [CompressedLayers(m) for group in managers.values() for m in group]

    @classmethod
    def build(cls, managers: dict[str, list], host_available: int | None = None) -> "CompressedStreaming | None":
        """Encode every list; None (and one line) when the decoder cannot run here or the host
        cannot hold both stores until the choice is made."""
        stores = cls(managers)
        if not stores.stores:
            return None
        why = streaming_unavailable(sa.manager_device(stores.stores[0].manager))
        raw = sum(b.numel() * b.element_size() for s in stores.stores
                  for b in sa.manager_flat_host_buffers(s.manager, s.dtype).values())
        available = probe_host().pinnable_bytes if host_available is None else host_available
        if why is None and raw * EXPECTED_RATIO + HOST_MARGIN_BYTES > available:
            why = (f"the host has {gib(available)} to spare; holding both stores until measured needs "
                   f"{gib(raw * EXPECTED_RATIO + HOST_MARGIN_BYTES)}")
        if why is None and raw == 0:
            why = "no offloaded layer is held as a flat bf16 host buffer"
        if why:
            logger().info("[autoperf] compressed streaming not tried: %s", why)
            return None
        for store in stores.stores:
            store.build()
        return stores._checked()

    def _checked(self) -> "CompressedStreaming | None":
        """One layer decoded and compared with sglang's raw buffer, bit for bit, before anything
        streams (this also compiles the decoder: 0.9 s in the first compressed step otherwise,
        benchmarks/results/2026-11-29-h200-compress/)."""
        store = next((s for s in self.stores if s.packed), None)
        if store is None:
            return None
        first = min(store.packed)
        mismatched = store.mismatched_layers(only=(first,))
        if mismatched:
            self.commit(False)
            logger().warning("[autoperf] compressed streaming not used: layer %d of %s decodes to other bits",
                             first, sa.manager_layer_list_name(store.manager))
            return None
        return self

    @property
    def active(self) -> bool:
        return any(s.active for s in self.stores)

    def set_active(self, active: bool) -> None:
        for store in self.stores:
            if store.committed is None:
                store.active = active

    def commit(self, compressed: bool) -> None:
        for store in self.stores:
            store.commit(compressed)

    def host_bytes(self) -> int:
        return sum(s.host_bytes() for s in self.stores)

    def report(self) -> dict[str, Any]:
        total = StoreReport()
        for s in self.stores:
            r = s.report
            total.layers += r.layers
            total.raw_bytes += r.raw_bytes
            total.compressed_bytes += r.compressed_bytes
            total.encode_s += r.encode_s
            total.pinned = total.pinned or r.pinned
            for reason, n in r.kept_raw.items():
                total.kept_raw[reason] = total.kept_raw.get(reason, 0) + n
        return total.to_dict()

    def staging_bytes(self) -> int:
        """Device bytes a compressed prefetch adds beside the layer it decodes: the packed bytes'
        staging buffer (0.67 GiB on FLUX.1's double blocks: every compressed point of
        benchmarks/results/2026-11-29-h200-compress/ peaked 0.67-0.83 GiB above its raw twin)."""
        return max((lay.nbytes for s in self.stores for _, lay in s.packed.values()), default=0)

    @property
    def decided(self) -> bool:
        return all(s.committed is not None for s in self.stores)

    def raw_bytes(self) -> int:
        return sum(s.report.raw_bytes for s in self.stores)


def _host_buffer(numel: int, dtype, pinned: bool):
    """Pinned exactly as sglang pins its own layer buffers, or pageable where sglang's was."""
    import torch

    return sa.pinned_host_buffer(numel, dtype) if pinned else torch.empty(numel, dtype=dtype)


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (torch's type, or its message where another layer re-raised it)."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class CompressionChoice:
    """The worker's compressed-vs-raw choice: taken from the cache, or measured on served steps by
    retune/compression.CompressionAB, then committed (one store kept) and reported."""

    def __init__(self, streaming: CompressedStreaming):
        self.streaming = streaming
        self.ab = None
        self.pending: list = []  # (compressed, start event, end event) of timed steps, read at request end

    @property
    def measuring(self) -> bool:
        return self.ab is not None

    def staging_bytes(self) -> int:
        """What a placement must leave free for compressed prefetches (0 once raw was kept)."""
        return self.streaming.staging_bytes()

    def begin_request(self, cached_choice: bool | None, calibrating: bool, placement_label: str) -> None:
        from sglang_autoperf.retune.compression import CompressionAB

        if self.streaming.decided or self.ab is not None:
            return
        if cached_choice is not None:
            self.commit(cached_choice, "the tuning cache's measured choice")
            return
        if not calibrating:
            self.ab = CompressionAB()
            logger().info("[autoperf] measuring compressed vs raw layer streaming at %s on the next steps "
                          "(the outputs are the same bit for bit either way)", placement_label)

    def run_step(self, original, args, kwargs, first_of_request: bool):
        """One served step under the A/B: its mode set first; a compressed step that fails (out of
        memory: the staging buffer) ends compression and the step runs again raw."""
        import torch

        ab = self.ab
        if first_of_request:  # residency is armed on a request's first step: not a step to time
            return original(*args, **kwargs)
        try:
            compressed, timed = ab.compressed_now(), ab.timed_now()
            self.streaming.set_active(compressed)
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if timed else None
            if events:
                events[0].record()
        except Exception as exc:  # ours: raw from now on, and the step runs as sglang's
            self.commit(False, f"the A/B failed ({type(exc).__name__}: {str(exc)[:120]})")
            return original(*args, **kwargs)
        try:
            result = original(*args, **kwargs)
        except Exception as exc:
            if not compressed or not is_oom(exc):
                raise
            self.commit(False, f"a compressed step ran out of memory ({str(exc)[:120]})")
            torch.cuda.empty_cache()
            return original(*args, **kwargs)  # the failed step had not advanced the latents
        if events:
            events[1].record()
            self.pending.append((compressed, *events))
        ab.advance()
        return result

    def end_request(self) -> tuple[bool, dict[str, float]] | None:
        """At a request's end: the timed steps read; the choice once both arms have their samples."""
        ab, pending, self.pending = self.ab, self.pending, []
        if ab is None:
            return None
        for compressed, start, end in pending:
            end.synchronize()
            ab.record(compressed, start.elapsed_time(end))
        if not ab.done:
            return None
        keep = ab.keep_compressed()
        logger().info("[autoperf] %s", ab.summary())
        self.commit(keep, "measured")
        return keep, {"raw": ab.raw_median(), "compressed": ab.compressed_median()}

    def commit(self, keep: bool, why: str) -> None:
        before = self.streaming.host_bytes()
        self.streaming.commit(keep)
        self.ab = None
        if keep:
            logger().info("[autoperf] compressed layer streaming on (%s): host memory for the streamed layers "
                          "%s -> %s (%s with both stores)", why, gib(self.streaming.raw_bytes()),
                          gib(self.streaming.host_bytes()), gib(before))
        else:
            logger().info("[autoperf] compressed layer streaming off (%s); sglang's raw host buffers stream", why)


def attach_compression(managers: dict[str, list], plan, settings) -> "CompressionChoice | None":
    """Build both stores where the plan predicts compression pays (or the user asked for it)."""
    predicted = bool(getattr(plan, "compression_predicted", False))  # startup.StartupPlan
    if settings.compress == "off" or not (predicted or settings.compress == "on"):
        return None
    streaming = CompressedStreaming.build(managers)
    if streaming is None:
        return None
    r = streaming.report()
    logger().info("[autoperf] compressed layer streaming ready: %d layers, %s as %s (%.3f of bf16), encoded in "
                  "%.1f s%s", r["layers"], gib(r["raw_bytes"]), gib(r["compressed_bytes"]), r["ratio"], r["encode_s"],
                  f"; kept raw: {r['kept_raw']}" if r["kept_raw"] else "")
    choice = CompressionChoice(streaming)
    if settings.compress == "on":
        choice.commit(True, f"{'SGLANG_AUTOPERF_COMPRESS'}=1")
    return choice
