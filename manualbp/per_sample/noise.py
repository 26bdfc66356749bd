"""DP-SGD's Gaussian noise drawn one step ahead: ``NoiseStream``.

The noise of a step does not depend on the data, so it can be drawn while the step's forward and backward run.
``NoiseStream`` wraps one ``torch.Generator`` (torch's ``normal_``: mt19937 and Box-Muller; the fastest of the
normal generators measured on CPU by ``experiments/bench_dp_noise.py``, ahead of numpy's ziggurat on PCG64, SFC64,
Philox and MT19937, of Box-Muller from ``torch.rand`` and of two generators on two threads) and, with
``prefetch=True``, draws the next step's noise in a background thread as soon as a step has taken its own.

The stream is the one the generator alone gives: a draw is the generator's ``normal_(0, std)`` into tensors of
the requested shapes, in order, as ``add_noise`` draws with a plain generator, so a seeded run gives the same
noise bit for bit with or without prefetching. A prefetched draw that the next step does not ask for (other
shapes, dtypes or std) is thrown away and the generator put back where the last step left it, so nothing of the
stream is skipped. ``get_state()`` is that point too (not the generator's own state, ahead by the prefetched
draw): a checkpoint resumes at the step that follows, whose noise is the prefetched draw.

Prefetching is only done on CPU (a CUDA generator's ``normal_`` is already asynchronous) and only helps when a
core is idle during the step: on a machine whose cores the step keeps busy, the background thread takes their
time instead (measured in ``experiments/bench_dp_noise.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

#: What a draw is for: each tensor's (shape, strides, dtype, device), and the std.
Key = tuple[tuple[tuple[torch.Size, tuple[int, ...], torch.dtype, torch.device], ...], float]


def _key(likes: Sequence[torch.Tensor], std: float) -> Key:
    return tuple((t.shape, t.stride(), t.dtype, t.device) for t in likes), float(std)


class NoiseStream:
    """N(0, std²) draws for DP-SGD's noise from ``generator`` (see the module docstring); ``prefetch``: draw the
    next step's noise in a background thread (CPU generators only).

    ``draw(likes, std)``, a context manager: tensors shaped like ``likes`` of independent N(0, std²) values, the
    generator's next draws; when the ``with`` block ends they may be overwritten by the next prefetch, so use them
    inside it. ``get_state()`` / ``set_state(state)``: the generator's state where the stream's consumer stands."""

    def __init__(self, generator: torch.Generator, prefetch: bool = False) -> None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"NoiseStream: generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self.prefetch = bool(prefetch) and generator.device.type == "cpu"
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self._buffers: list[torch.Tensor] = []
        self._key: Key | None = None
        self._consumed: torch.Tensor | None = None  # the generator's state before the pending draw

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def _fill(self, std: float) -> None:
        for buffer in self._buffers:
            buffer.normal_(0.0, std, generator=self.generator)

    def _settle(self, key: Key | None) -> bool:
        """Wait for the pending draw; True if it is the draw ``key`` asks for, else the generator is put back."""
        if self._pending is None:
            return False
        pending, self._pending = self._pending, None
        pending.result()  # a failure in the thread is raised here
        if key is not None and key == self._key:
            return True
        assert self._consumed is not None, "a pending draw records the state it started from"
        self.generator.set_state(self._consumed)
        return False

    @contextmanager
    def draw(self, likes: Sequence[torch.Tensor], std: float) -> Iterator[list[torch.Tensor]]:
        key = _key(likes, std)
        if not self._settle(key):
            if key != self._key:
                self._buffers = [torch.empty_like(t) for t in likes]  # laid out as add_noise's own draws
                self._key = key
            self._fill(std)
        yield self._buffers
        if self.prefetch:
            self._consumed = self.generator.get_state()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="manualbp-noise")
            self._pending = self._pool.submit(self._fill, std)

    def get_state(self) -> torch.Tensor:
        """The generator's state after the draws taken so far (a pending prefetch not counted)."""
        if self._pending is not None:
            assert self._consumed is not None, "a pending draw records the state it started from"
            return self._consumed.clone()
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Continue the stream from ``state`` (``get_state()``'s); a pending prefetch is thrown away."""
        self._settle(None)
        self.generator.set_state(state)

    def close(self) -> None:
        """Wait for a pending draw (kept: the next ``draw`` may take it) and end the background thread."""
        if self._pending is not None:
            self._pending.result()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __getstate__(self) -> dict[str, Any]:  # picklable: the stream where its consumer stands, no thread
        return {"generator_state": self.get_state(), "device": str(self.device), "prefetch": self.prefetch}

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator(state["device"])
        generator.set_state(state["generator_state"])
        self.__init__(generator, state["prefetch"])  # type: ignore[misc]
