"""Balanced fan-out: chunks pulled by lanes, an instance that is slow, fails or answers out of order.

No HTTP and no model: ``post`` is a round-robin router over fake instances, and the local classifier
answers each photo with its own number as the prediction id, so every test can check that each photo
got its own answer, in request order, and who gave it. The tests order events with threading
events, never with sleeps or timing assertions; each wait has a generous bound only so that a bug
fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

import pytest

from function.core.fanout import HEADER, LOCAL_LANES, REMOTE_TRIES, FanOut
from function.core.results import Classification, PhotoResult, Prediction
from function.core.sources import PhotoSource
from function.errors import FanoutFailed, FanoutRefused, NotReady

BOUND_S = 30.0  # how long a test waits for an event before it fails


def photos(n: int) -> list[PhotoSource]:
    return [PhotoSource.url(f"https://photos.example/{i}.jpg") for i in range(n)]


def number(source: PhotoSource) -> int:
    return int(source.ref.rsplit("/", 1)[1].split(".")[0])


def answer(sources: Sequence[PhotoSource], who: str) -> Classification:
    return Classification([PhotoResult(s, [Prediction(number(s), who, 1.0)]) for s in sources], {"total": 1.0})


class Local:
    """The front instance's classifier: answers as ``here``; ``gate`` (if set) must open before it works."""

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.photos: list[int] = []
        self.taken: list[int] = []  # photos of the chunks taken, the gate open or not
        self.lock = threading.Lock()

    def __call__(self, sources: Sequence[PhotoSource], k: int) -> Classification:
        with self.lock:
            self.taken += [number(s) for s in sources]
        if self.gate is not None:
            assert self.gate.wait(BOUND_S), "the test's gate never opened"
        with self.lock:
            self.photos += [number(s) for s in sources]
        return answer(sources, "here")


Instance = Callable[[list[PhotoSource]], Classification]


class Router:
    """``post`` over fake instances in turn, as a round-robin router in front of them would."""

    def __init__(self, *instances: Instance):
        self.instances = instances
        self.turn = itertools.cycle(range(len(instances)))
        self.sent: list[tuple[int, list[int]]] = []  # (instance, photos) per sub-request, in order sent
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, doc, headers):
        sources = [PhotoSource.url(u) for u in doc["urls"]]
        with self.lock:
            i = next(self.turn)
            self.sent.append((i, [number(s) for s in sources]))
            self.headers.append(dict(headers))
        return self.instances[i](sources).to_dict()

    def photos_sent_to(self, i: int) -> list[int]:
        with self.lock:
            return [p for j, ps in self.sent if j == i for p in ps]


def fast(name: str) -> Instance:
    return lambda sources: answer(sources, name)


def failing(sources: list[PhotoSource]) -> Classification:
    raise FanoutFailed("the instance handling this chunk answered HTTP 502")


def front(sources: list[PhotoSource]) -> Classification:
    """The front instance itself, as the router sees it: it refuses the chunks it sent."""
    raise FanoutRefused("the chunk was routed back to the instance that sent it (HTTP 421)")


@contextlib.contextmanager
def logged(text: str) -> Iterator[threading.Event]:
    """An event set when the fan-out logs a record containing ``text``."""
    seen = threading.Event()

    class Handler(logging.Handler):
        def emit(self, record):
            if text in record.getMessage():
                seen.set()

    handler, logger = Handler(), logging.getLogger("function.core.fanout")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def fanouts():
    made: list[FanOut] = []

    def make(post, chunk: int = 4, inflight: int = 2) -> FanOut:
        made.append(FanOut(post, chunk, inflight))
        return made[-1]

    yield make
    for f in made:
        f.stop()


def numbers(result: Classification) -> list[int]:
    return [r.predictions[0].id for r in result.results]


def who(result: Classification) -> dict[int, str]:
    return {r.predictions[0].id: r.predictions[0].label for r in result.results}


def test_every_photo_is_answered_once_in_request_order(fanouts):
    router = Router(fast("a"), fast("b"))
    result = fanouts(router).classify(Local(), photos(40), 3)
    assert numbers(result) == list(range(40))
    assert all(r.ok for r in result.results)
    assert [r.source.ref for r in result.results] == [s.ref for s in photos(40)]


def test_chunks_are_no_bigger_than_the_chunk_size_and_smaller_towards_the_end(fanouts):
    last_sent = threading.Event()

    def remote(sources):
        if number(sources[-1]) == 63:
            last_sent.set()
        return answer(sources, "remote")

    router = Router(remote)
    # The front instance's lanes wait until the last photo is sent, so the remote lanes cut every chunk.
    result = fanouts(router, chunk=8, inflight=2).classify(Local(gate=last_sent), photos(64), 3)
    sizes = [len(p) for _, p in sorted(router.sent, key=lambda sent: sent[1][0])]  # in the order cut
    assert numbers(result) == list(range(64)) and sum(sizes) == 64
    assert max(sizes) <= 8 and sizes[-1] < sizes[0]
    assert sizes == sorted(sizes, reverse=True)


def test_a_slow_instances_chunk_is_classified_here_and_the_request_does_not_wait_for_it(fanouts):
    # The slow instance never answers while the request runs: the request can only end if the front
    # instance takes its chunk over (a backup) once the queue is empty.
    release = threading.Event()
    slow_got_one = threading.Event()

    def slow(sources):
        slow_got_one.set()
        assert release.wait(BOUND_S)
        return answer(sources, "slow")

    router = Router(slow, fast("quick"))
    try:
        result = fanouts(router).classify(Local(gate=slow_got_one), photos(20), 3)
        held = router.photos_sent_to(0)
    finally:
        release.set()
    assert numbers(result) == list(range(20))
    assert held and all(who(result)[p] == "here" for p in held)
    assert result.timings_ms["backups"] >= 1


def test_a_failing_instances_chunks_are_sent_again_and_no_photo_is_lost(fanouts):
    failed_once = threading.Event()

    def failing_once_seen(sources):
        failed_once.set()
        return failing(sources)

    router = Router(failing_once_seen, fast("good"))
    result = fanouts(router, chunk=4, inflight=2).classify(Local(gate=failed_once), photos(24), 3)
    failed = router.photos_sent_to(0)
    assert failed
    assert numbers(result) == list(range(24))
    assert all(r.ok for r in result.results)
    assert all(who(result)[p] in ("good", "here") for p in failed)
    assert result.timings_ms["fanout_failures"] >= 1


def test_a_chunk_is_sent_at_most_remote_tries_times_then_classified_here(fanouts):
    # Chunks of one photo (more lanes than photos), every send failing. The front instance's lanes
    # hold the chunks they took until every other photo has been sent REMOTE_TRIES times; were a
    # chunk sent more often, the remote lanes would go on sending it.
    all_tried = threading.Event()
    local = Local(gate=all_tried)

    def counts() -> dict[int, int]:
        seen: dict[int, int] = {}
        for _, ps in router.sent:
            for p in ps:
                seen[p] = seen.get(p, 0) + 1
        return seen

    def refusing(sources):
        with router.lock, local.lock:
            sent = counts()
            if set(sent) | set(local.taken) == set(range(12)) and all(n == REMOTE_TRIES for n in sent.values()):
                all_tried.set()
        return failing(sources)

    router = Router(refusing)
    fan = fanouts(router, chunk=2, inflight=40)  # never enough failures in a row to stop sending
    result = fan.classify(local, photos(12), 3)
    assert numbers(result) == list(range(12))
    assert all(who(result)[p] == "here" for p in range(12))
    sent = counts()
    assert len(sent) >= 12 - LOCAL_LANES  # the front's lanes took a chunk each at most before sending began
    assert all(n == REMOTE_TRIES for n in sent.values())


def test_when_every_instance_fails_the_front_stops_sending_and_classifies_everything(fanouts):
    router = Router(failing, failing)
    with logged("fan-out stopped") as stopped:
        result = fanouts(router, chunk=4, inflight=3).classify(Local(gate=stopped), photos(200), 3)
    assert numbers(result) == list(range(200))
    assert all(who(result)[p] == "here" for p in range(200))
    # Sending stops after `inflight` failures in a row; lanes already sending finish their one send.
    assert 3 <= len(router.sent) <= 2 * 3


def test_chunks_routed_back_to_the_front_go_to_the_other_instance(fanouts):
    # Round robin over the front and one other instance: every other send comes back refused, which
    # is no reason to stop sending; the refused chunks reach the other instance or are classified here.
    other_answered = threading.Event()

    def other(sources):
        other_answered.set()
        return answer(sources, "other")

    router = Router(front, other)
    result = fanouts(router, chunk=4, inflight=2).classify(Local(gate=other_answered), photos(80), 3)
    assert numbers(result) == list(range(80))
    assert set(who(result).values()) <= {"other", "here"}
    refused = [ps for i, ps in router.sent if i == 0]
    assert refused and len(router.photos_sent_to(1)) > 0
    assert result.timings_ms["remote_chunks"] >= 1


def test_an_instance_alone_stops_sending_after_its_chunks_keep_coming_back(fanouts):
    router = Router(front)
    with logged("fan-out stopped") as stopped:
        result = fanouts(router, chunk=4, inflight=3).classify(Local(gate=stopped), photos(200), 3)
    assert numbers(result) == list(range(200))
    assert all(who(result)[p] == "here" for p in range(200))
    # 2 x inflight refusals, and at most one more send from each lane already sending.
    assert 2 * 3 <= len(router.sent) <= 3 * 3
    # The rest, classified here, in chunks as big as the lanes here allow.
    assert result.timings_ms["local_chunks"] < 200 / 4


def test_chunks_answered_out_of_order_land_in_request_order(fanouts):
    # The instance holds the first `inflight` chunks, then answers them newest first, each only once
    # the lane that sent the one before has taken in its answer (it comes back with its next chunk).
    # Later chunks wait until the held ones are answered, and so does the front instance.
    inflight = 3
    held: list[tuple[int, int, threading.Event, threading.Event]] = []  # (first photo, lane, go, came back)
    lock = threading.Lock()
    all_held, all_answered = threading.Event(), threading.Event()
    released: list[int] = []

    def backwards(sources):
        me = threading.get_ident()
        with lock:
            for _, lane, _, came_back in held:
                if lane == me:
                    came_back.set()
            if len(held) < inflight:
                go = threading.Event()
                held.append((number(sources[0]), me, go, threading.Event()))
                if len(held) == inflight:
                    all_held.set()
            else:
                go = all_answered  # a lane back for more waits, so the queue still holds work for the others
        assert go.wait(BOUND_S)
        return answer(sources, "remote")

    def release_newest_first():
        assert all_held.wait(BOUND_S)
        for first, _, go, came_back in sorted(held, reverse=True):
            released.append(first)
            go.set()
            assert came_back.wait(BOUND_S)
        all_answered.set()

    controller = threading.Thread(target=release_newest_first)
    controller.start()
    router = Router(backwards)
    result = fanouts(router, chunk=4, inflight=inflight).classify(Local(gate=all_answered), photos(40), 3)
    controller.join(BOUND_S)
    assert all_answered.is_set() and len(released) == inflight
    assert numbers(result) == list(range(40))
    assert all(r.ok for r in result.results)
    assert all(who(result)[first] == "remote" for first in released)


def test_an_answer_for_the_wrong_number_of_photos_is_a_failed_chunk(fanouts):
    short = Router(lambda sources: answer(sources[:-1], "short"))
    result = fanouts(short).classify(Local(), photos(12), 3)
    assert numbers(result) == list(range(12))
    assert all(who(result)[p] == "here" for p in range(12))


def test_the_local_classifier_failing_fails_the_request(fanouts):
    def not_ready(sources, k):
        raise NotReady("model is loading", retry_after_s=1)

    # No other instance answers, so the photos can only be classified here, where the model is not ready.
    with pytest.raises(NotReady):
        fanouts(Router(failing)).classify(not_ready, photos(12), 3)


def test_chunks_carry_this_instances_id_and_only_it_is_recognised(fanouts):
    router = Router(fast("a"))
    fan = fanouts(router)
    fan.classify(Local(), photos(40), 3)
    assert router.headers and all(h[HEADER] == fan.instance for h in router.headers)
    assert fan.sent_here(fan.instance)
    assert not fan.sent_here("1") and not fan.sent_here(fanouts(router).instance)


def test_a_request_no_bigger_than_a_chunk_is_classified_here_only(fanouts):
    router = Router(fast("a"))
    result = fanouts(router, chunk=4).classify(Local(), photos(4), 3)
    assert numbers(result) == [0, 1, 2, 3] and router.sent == []


def test_an_instance_that_found_itself_alone_classifies_the_next_big_requests_whole(fanouts):
    router = Router(front)
    fanout = fanouts(router, chunk=4, inflight=2)
    fanout.classify(Local(), photos(40), 3)  # finds out: its chunks keep coming back
    sent = len(router.sent)
    local = Local()
    result = fanout.classify(local, photos(40), 3)
    assert len(router.sent) == sent, "nothing is sent while it remembers it is alone"
    assert numbers(result) == list(range(40)) and sorted(local.photos) == list(range(40))
    assert result.timings_ms.get("local_chunks") is None  # one local call, not chunks


def test_an_instance_alone_tries_again_once_its_memory_of_it_ends(fanouts):
    router = Router(front)
    fanout = FanOut(router, 4, 2, alone_s=0.0)  # forgets at once
    try:
        fanout.classify(Local(), photos(40), 3)
        sent = len(router.sent)
        fanout.classify(Local(), photos(40), 3)
        assert len(router.sent) > sent
    finally:
        fanout.stop()


def test_a_chunk_sent_elsewhere_is_taken_here_only_once_this_instance_has_no_chunk_of_its_own(fanouts):
    # A chunk out at a slow instance (a backup) or refused and waiting to be sent again, classified
    # here beside a chunk of this instance's own share, would slow that one down on a busy core. The
    # first chunk here is held until every photo is out or taken here, and a moment longer, so that a
    # lane with nothing else to do has its chance to take one beside it. The slow instance answers only
    # once one of its chunks is taken here.
    release = threading.Event()
    n = 24
    taken: list[int] = []

    def slow(sources):
        assert release.wait(BOUND_S)
        return answer(sources, "slow")

    router = Router(front, slow)
    lock = threading.Lock()
    busy, beside, first = [0], [], threading.Event()

    def dry() -> bool:
        with router.lock:
            sent = {p for _, ps in router.sent for p in ps}
        with lock:
            return sent | set(taken) == set(range(n))

    def local(sources, k):
        mine = {number(s) for s in sources}
        with router.lock:
            sent = {p for _, ps in router.sent for p in ps}
        with lock:
            if mine & sent:  # the slow instance answers once its chunk is taken here
                beside.append(busy[0])
                release.set()
            busy[0] += 1
            taken.extend(mine)
            hold = not first.is_set()
            first.set()
        try:
            if hold:
                pause = threading.Event()  # never set: a bounded wait between looks
                for _ in range(int(BOUND_S / 0.01)):
                    if dry():
                        break
                    pause.wait(0.01)
                pause.wait(0.3)  # room for a wrong take: with the rule kept, none happens meanwhile
            return answer(sources, "here")
        finally:
            with lock:
                busy[0] -= 1

    try:
        result = fanouts(router, chunk=4, inflight=2).classify(local, photos(n), 3)
    finally:
        release.set()
    assert numbers(result) == list(range(n))
    assert beside and all(b == 0 for b in beside), f"taken beside {beside} chunks of this instance's own"


def test_the_answer_does_not_wait_for_a_backup_once_the_other_instances_answer_is_in(fanouts):
    # The other instance answers only once the front has backed its chunk up; the backup itself never
    # finishes while the request runs. The request ends on the other instance's answer: the backup
    # runs on a lane of the pool, never on the request's own thread.
    release, backup_started, finish_backup = threading.Event(), threading.Event(), threading.Event()

    def slow(sources):
        assert release.wait(BOUND_S)
        return answer(sources, "slow")

    router = Router(slow)

    def local(sources, k):
        if set(number(s) for s in sources) & set(router.photos_sent_to(0)):
            backup_started.set()
            release.set()
            assert finish_backup.wait(BOUND_S)
        return answer(sources, "here")

    try:
        result = fanouts(router, chunk=4, inflight=1).classify(local, photos(12), 3)
        ended_before_backup = not finish_backup.is_set()
    finally:
        release.set()
        finish_backup.set()
    assert backup_started.is_set()
    assert ended_before_backup
    assert numbers(result) == list(range(12))
    assert result.timings_ms["backups"] == 1


def test_a_failing_backup_does_not_fail_a_request_the_other_instance_answers(fanouts):
    # The slow instance answers only once the backup here has failed: its answer is all the request needs.
    release = threading.Event()

    def slow(sources):
        assert release.wait(BOUND_S)
        return answer(sources, "slow")

    router = Router(slow)

    def local(sources, k):
        if {number(s) for s in sources} & set(router.photos_sent_to(0)):
            release.set()
            raise NotReady("model is reloading", retry_after_s=1)
        return answer(sources, "here")

    try:
        result = fanouts(router, chunk=4, inflight=1).classify(local, photos(12), 3)
    finally:
        release.set()
    assert numbers(result) == list(range(12))


class Key(str):
    """A timing name; formatting it (classify does, building the answer's timings) waits for a backup's
    timings to land in the request's, unlocked."""

    formatting = threading.Event()
    inserted = threading.Event()

    def __format__(self, spec):
        Key.formatting.set()
        assert Key.inserted.wait(BOUND_S)
        return str.__format__(str(self), spec)


class LateTimings(dict):
    def items(self):
        yield "late", 1.0  # a name no chunk before had (a cold model's load timings, say)
        Key.inserted.set()


def test_a_backup_ending_after_the_last_answer_does_not_break_the_answer(fanouts):
    release, pooled_ran = threading.Event(), threading.Event()

    def slow(sources):
        assert release.wait(BOUND_S)
        return answer(sources, "slow")

    router = Router(slow)

    def local(sources, k):
        if threading.current_thread().name.startswith("fanout"):
            pooled_ran.set()
        else:  # the request's own thread: hold its chunk until a pooled lane has started
            assert pooled_ran.wait(BOUND_S)
        if {number(s) for s in sources} & set(router.photos_sent_to(0)):  # the backup, on a pooled lane
            release.set()  # the other instance answers: every photo has its answer
            assert Key.formatting.wait(BOUND_S)  # ... and the request is building its answer
            return Classification(answer(sources, "here").results, LateTimings(total=1.0))
        return Classification(answer(sources, "here").results, {Key("fetch"): 1.0, "total": 1.0})

    try:
        result = fanouts(router, chunk=4, inflight=1).classify(local, photos(12), 3)
    finally:
        release.set()
        Key.inserted.set()
    assert numbers(result) == list(range(12))


class NotAResultDocument:
    """An instance's answer that is JSON but not a result document: results that are not objects."""

    def __init__(self, sources):
        self.n = len(sources)

    def to_dict(self):
        return {"results": ["x"] * self.n}


def test_an_answer_that_is_not_a_result_document_is_a_failed_chunk_sent_again(fanouts):
    router = Router(NotAResultDocument, fast("good"))
    result = fanouts(router, chunk=4, inflight=2).classify(Local(), photos(24), 3)
    assert numbers(result) == list(range(24))
    assert set(who(result).values()) <= {"good", "here"}
    assert result.timings_ms["fanout_failures"] >= 1
