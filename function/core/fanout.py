"""Fan-out: split a request with many photos across instances of the same Service.

With ``FANOUT_URL`` set (the Service's own URL), a request with more than ``FANOUT_CHUNK`` photos
is cut into chunks of that size. This instance classifies the first chunk itself and posts the
others to ``FANOUT_URL`` at once; Knative spreads those sub-requests over pods (scaling out if it
must), and the answers are merged in request order. Sub-requests carry :data:`HEADER`, and a
request carrying it is never split again. A chunk that fails becomes per-photo errors.

A wrapper around the classifier, not a part of it: :meth:`FanOut.classify` takes the local
``classify`` to run on the first chunk, sends the others with the injected ``post`` (the HTTP call
is infra's, :class:`function.infra.fetch.JsonPoster`), and reads the other instances' answers with
the result types' own ``from_dict``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import FanoutFailed, PhotoError
from .results import Classification, PhotoResult
from .sources import PhotoSource

log = logging.getLogger(__name__)

HEADER = "X-Bird-Fanout"

# post(document, headers) -> the answer's JSON document; raises a PhotoError (FanoutFailed) when the
# other instance does not answer 200.
Post = Callable[[Mapping[str, Any], Mapping[str, str]], Any]


class FanOut:
    def __init__(self, post: Post, chunk: int, workers: int = 16):
        self.post, self.chunk = post, chunk
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fanout")

    def wanted(self, sources: Sequence[PhotoSource]) -> bool:
        """Only caller URLs are split: a bucket object (ObjectSource) is read signed by this instance,
        and another instance would get it as a plain URL, unsigned and behind the SSRF guard."""
        return len(sources) > self.chunk and all(s.kind == "url" and type(s) is PhotoSource for s in sources)

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def classify(self, local: Callable[[Sequence[PhotoSource], int], Classification],
                 sources: Sequence[PhotoSource], k: int, request_id: str | None = None) -> Classification:
        """``local(sources, k)`` for small requests; otherwise chunks spread over instances, merged in order."""
        if not self.wanted(sources):
            return local(sources, k)
        t0 = time.perf_counter()
        chunks = [list(sources[i:i + self.chunk]) for i in range(0, len(sources), self.chunk)]
        remote = [self._pool.submit(self._post, c, k, request_id) for c in chunks[1:]]
        mine = local(chunks[0], k)
        results = list(mine.results)
        remote_ms = 0.0
        for future in remote:
            chunk_results, ms = future.result()
            results.extend(chunk_results)
            remote_ms = max(remote_ms, ms)
        timings = {**{f"local_{k_}": v for k_, v in mine.timings_ms.items() if k_ != "total"},
                   "fanout": remote_ms, "chunks": float(len(chunks)), "total": (time.perf_counter() - t0) * 1000}
        log.info("fanned out %d photos in %d chunks", len(sources), len(chunks))
        return Classification(results, timings)

    def _post(self, chunk: list[PhotoSource], k: int, request_id: str | None) -> tuple[list[PhotoResult], float]:
        t0 = time.perf_counter()
        headers = {HEADER: "1", **({"X-Request-Id": request_id} if request_id else {})}
        try:
            doc = self.post({"urls": [s.ref for s in chunk], "top_k": k}, headers)
            answered = doc["results"]
            if len(answered) != len(chunk):
                raise FanoutFailed("the instance handling this chunk answered for "
                                   f"{len(answered)} photos, not {len(chunk)}")
            results = Classification.from_dict(chunk, doc).results
        except PhotoError as err:
            results = [PhotoResult(s, error=err) for s in chunk]
        except (ValueError, KeyError, TypeError) as exc:  # an answer that is not a result document
            failed = FanoutFailed(f"the chunk could not be classified by another instance: {exc}")
            results = [PhotoResult(s, error=failed) for s in chunk]
        return results, (time.perf_counter() - t0) * 1000
