"""Ordinary Python, profiled in-process by cProfile for a region while scope-ebpf
traces it: stdlib work, generators, coroutines under asyncio, exceptions caught
and uncaught, class instantiation, closures, properties, deep recursion, threads.

argv[1]: where to write cProfile's per-function counts for the region (JSON).
The region is bracketed by calls of region_begin() and region_end(), outside
it, so the trace can be cut at the same place.
"""
import asyncio
import cProfile
import dataclasses
import difflib
import email
import email.policy
import json
import sys
import textwrap
import threading

TEXT_A = "\n".join(f"line {i} of the first text, {'x' * (i % 7)}" for i in range(60))
TEXT_B = "\n".join(f"line {i} of the {'second' if i % 5 else 'first'} text" for i in range(60))
MESSAGE = ("From: a@example.com\nTo: b@example.com\nSubject: hello\n"
           "Content-Type: text/plain\n\n" + "body text\n" * 20)


@dataclasses.dataclass
class Item:
    name: str
    qty: int = 1


class Base:
    def __init__(self, x):
        self.x = x


class Point(Base):
    def __init__(self, x, y):
        super().__init__(x)
        self.y = y

    @property
    def norm2(self):
        return self.x * self.x + self.y * self.y


class Plain:
    def __init__(self, v):
        self.v = v


def counter(n):
    for i in range(n):  # noqa: UP028 (a Python generator: each resume is a call)
        yield i


def relay(n):
    yield from counter(n)


def make_adder(k):
    def add(v):
        return v + k
    return add


class Oops(Exception):
    pass


def fail(depth):
    if depth == 0:
        raise Oops("deep")
    return fail(depth - 1)


def caught():
    try:
        fail(3)
    except Oops:
        return 1


def down(n):
    return 0 if n == 0 else 1 + down(n - 1)


async def pause(i):
    await asyncio.sleep(0)
    return i


async def worker(i):
    total = 0
    for j in range(5):
        total += await pause(j)
    return total + i


async def agen(n):
    for i in range(n):
        yield i
        await asyncio.sleep(0)


async def amain():
    results = await asyncio.gather(*(worker(i) for i in range(8)))
    async for v in agen(6):
        results.append(v)
    return sum(results)


def thread_step(i):
    return i * 2


def thread_work():
    for i in range(250):
        thread_step(i)


def stdlib_work():
    diff = list(difflib.unified_diff(TEXT_A.splitlines(), TEXT_B.splitlines(), lineterm=""))
    ratio = difflib.SequenceMatcher(None, TEXT_A[:400], TEXT_B[:400]).ratio()
    data = json.loads(json.dumps({"items": [dataclasses.asdict(Item(f"n{i}", i))
                                            for i in range(40)]}, indent=1))
    msg = email.message_from_string(MESSAGE, policy=email.policy.default)
    wrapped = textwrap.fill(TEXT_A[:600], width=50)
    return len(diff), ratio, len(data["items"]), msg["subject"], len(wrapped)


def objects():
    pts = [Point(i, i + 1) for i in range(300)]
    plains = [Plain(i) for i in range(500)]
    add = make_adder(3)
    return sum(p.norm2 for p in pts) + sum(add(p.v) for p in plains)


def generators():
    total = sum(counter(100)) + sum(relay(50))
    g = counter(10)
    next(g)
    g.close()
    g = counter(10)
    next(g)
    try:
        g.throw(Oops("into the generator"))
    except Oops:
        pass
    return total + sum(x * 2 for x in range(30))


def exceptions():
    n = sum(caught() for _ in range(20))
    try:
        fail(5)
    except Oops:
        n += 1
    return n


def threads():
    ts = [threading.Thread(target=thread_work, name=f"worker-{i}") for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def work():
    stdlib_work()
    objects()
    generators()
    exceptions()
    asyncio.run(amain())
    down(900)
    threads()


def region_begin():
    pass


def region_end():
    pass


def main(out):
    work()  # once untraced by cProfile: lazy imports and caches settle
    prof = cProfile.Profile()
    hook = sys.getprofile()  # 3.11 under `scope-ebpf run`: its hook, which cProfile replaces
    region_begin()
    prof.enable()
    work()
    prof.disable()
    sys.setprofile(hook)
    region_end()
    # per code object, summed by (file, first line, name): pstats keeps one code
    # object per such key (two genexprs on a line, lambdas compiled from strings)
    counts = {}
    for entry in prof.getstats():
        code = entry.code
        if not isinstance(code, str):  # str: a C function
            key = (code.co_filename, code.co_firstlineno, code.co_name)
            counts[key] = counts.get(key, 0) + entry.callcount
    counts = [[*key, n] for key, n in counts.items()]
    with open(out, "w") as f:
        json.dump({"threading_tid": threading.get_native_id(), "counts": counts}, f)


main(sys.argv[1])
