"""What the app's handlers share: a cache of loaded pipelines, a worker thread that streams a library
call's callback events to a Gradio generator, and per-session cancel events.

    job = Job(lambda emit, cancel: erase(pipe, concept, method, callback=emit, cancel=cancel), cancel)
    for events in job.stream():      # lists of callback dicts, at most every `interval` seconds
        yield ui_update(events)
    result = job.result               # re-raises the worker's exception (e.g. Cancelled)

The library functions block and report through `callback`; Gradio streams by iterating a generator.
The worker thread bridges the two through a queue. Cancelling sets the `threading.Event` the library
function polls between steps, so the work itself stops, not only the page's wait for it.
"""

import contextlib
import copy
import queue
import threading
import time
from collections import OrderedDict


class Cancels:
    """One cancel event per (browser session, job kind): the cancel button sets the running job's event."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events: dict = {}

    def start(self, session: str, kind: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events[(session, kind)] = event
        return event

    def cancel(self, session: str, kind: str | None = None) -> int:
        """Set the events of `session` (one kind, or all of them); returns how many jobs were running."""
        with self._lock:
            keys = [k for k in self._events if k[0] == session and (kind is None or k[1] == kind)]
            for k in keys:
                self._events.pop(k).set()
        return len(keys)

    def finish(self, session: str, kind: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get((session, kind)) is event:
                del self._events[(session, kind)]

    @contextlib.contextmanager
    def running(self, session: str, kind: str):
        """`with cancels.running(session, "erase") as cancel:` registers the job's event for its whole duration."""
        event = self.start(session, kind)
        try:
            yield event
        finally:
            self.finish(session, kind, event)


_DONE = object()


class Job:
    """Run `fn(emit, cancel)` in a daemon thread; `stream()` yields the emitted events in batches."""

    def __init__(self, fn, cancel: threading.Event, name: str = "studio-job"):
        self.cancel = cancel
        self._queue: queue.Queue = queue.Queue()
        self._result = None
        self._error: BaseException | None = None
        self.started = time.time()
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True, name=name)
        self._thread.start()

    def _run(self, fn):
        try:
            self._result = fn(self._queue.put, self.cancel)
        except BaseException as e:  # handed to the handler's thread, which turns it into a readable message
            self._error = e
        finally:
            self._queue.put(_DONE)

    def stream(self, interval: float = 0.3):
        """Yield lists of events (possibly empty, so elapsed time can refresh) until the work ends.

        If the consumer stops early (the generator is closed: the page went away or Gradio cancelled
        it), the job's cancel event is set and the thread gets a moment to stop."""
        finished = False
        try:
            while not finished:
                batch = []
                deadline = time.time() + interval
                while True:
                    try:
                        item = self._queue.get(timeout=max(0.0, deadline - time.time()))
                    except queue.Empty:
                        break
                    if item is _DONE:
                        finished = True
                        break
                    batch.append(item)
                yield batch
        finally:
            if not finished:
                self.cancel.set()
                self._thread.join(timeout=30)

    @property
    def seconds(self) -> float:
        return time.time() - self.started

    @property
    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


class ModelStore:
    """Loaded pipelines, shared by all sessions (least recently used ones are dropped).

    Jobs that only read a model (generate, attack, edit) share the cached pipeline; an erasure trains
    a private copy, which is then cached under the session's key so later tabs reuse it.
    """

    def __init__(self, device=None, dtype=None, max_items: int = 3):
        self.device, self.dtype, self.max_items = device, dtype, max_items
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.RLock()

    def _put(self, key, pipe):
        self._cache[key] = pipe
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_items:
            self._cache.popitem(last=False)

    def get(self, model: str, text_encoder: str | None = None):
        """The pipeline for a model spec ("toy", a hub id, a folder, a .safetensors file), plus an optional plug-in encoder."""
        from studio.loading import load_pipeline

        key = ("model", str(model), str(text_encoder or ""))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            pipe = load_pipeline(model, device=self.device, dtype=self.dtype, text_encoder=text_encoder or None)
            self._put(key, pipe)
            return pipe

    def copy(self, model: str, text_encoder: str | None = None):
        """A private copy to train (an erasure changes its pipeline in place)."""
        with self._lock:
            pipe = self.get(model, text_encoder)
            # the UNet and text encoder are copied (an erasure trains one of them); the tokenizer, VAE and
            # scheduler are shared. A deep-copied CLIPTokenizer (transformers 5) also decodes wrongly:
            # its decoder loses the end-of-word handling and prints "</w>" into adversarial prompts.
            shared = [pipe.tokenizer, pipe.vae, pipe.scheduler, getattr(pipe, "feature_extractor", None)]
            return copy.deepcopy(pipe, memo={id(m): m for m in shared if m is not None})

    def put_erased(self, key: str, pipe) -> None:
        with self._lock:
            self._put(("erased", key), pipe)

    def erased(self, key: str, entry: dict):
        """The pipeline of a session's erasure: cached, or rebuilt from its base model and changed weights."""
        with self._lock:
            if ("erased", key) in self._cache:
                self._cache.move_to_end(("erased", key))
                return self._cache[("erased", key)]
            pipe = self.copy(entry["base"], entry.get("text_encoder"))
            entry["result"].apply(pipe)
            self._put(("erased", key), pipe)
            return pipe
