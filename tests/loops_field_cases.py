"""Loops written the way people write them, each a field report class (source needed: a file).

Each ``case_*`` function is plain Python; the tests run it plain, forced down the parallel path
and through ``@cluster(parallel=True)``, and require the same value, exception and state.
"""

import decimal
import itertools
import signal
import time
import warnings

import numpy as np

# 1 -- the loop variable, or an object reached through it, is mutated


def pad(rows):
    for row in rows:
        row.append(0)
    return rows


def double_rows(m):
    for row in m:
        row *= 2
    return m


def bump_items(xs):  # sibling: in-place on the loop variable over plain ints stays exact
    out = []
    for x in xs:
        x += 1
        out.append(x)
    return out, xs


def grow_nested(grid):  # sibling: mutation two levels down
    for row in grid:
        row[0].append(len(row))
    return grid


# 2 -- in-place operators on a private name bound to an outer object


def normalise(m):
    for i in range(len(m)):
        row = m[i]
        row /= row.sum()
    return m


def scale_lists(rows):  # sibling: `+=` on a list alias extends the outer list
    out = []
    for i in range(len(rows)):
        r = rows[i]
        r += [i]
        out.append(len(r))
    return out, rows


# 3 -- aliasing


def running(dst, src):
    for i in range(1, len(dst)):
        dst[i] += src[i - 1]
    return dst


def into_view(dst, src):  # sibling: the target is a numpy view of what is read
    for i in range(1, len(src)):
        dst[i] = src[i - 1] * 2
    return dst


def nested_alias(out, table):  # sibling: the target is inside a container the body reads
    for i in range(len(table[0])):
        out.append(len(table[0]) + i)
    return out


# 4 -- the iterable changes under the loop


def kids(n):
    return [2 * n + 1, 2 * n + 2] if n < 8 else []


def bfs(roots):
    order = list(roots)
    for node in order:
        order.extend(kids(node))
    return len(order)


def prop(xs, n):
    for i, x in enumerate(xs):
        if i + 1 < n:
            xs[i + 1] = x * 2
    return xs


def aliases(d):
    for k, v in d.items():
        d[k.upper()] = v
    return d


def set_grow(s):  # sibling: a set changed while iterated
    for v in s:
        s.add(v * 10)
    return s


def pairs(xs):
    it = iter(xs)
    out = []
    for a in it:
        out.append((a, next(it, None)))
    return out


def gen_source(n):  # sibling: a generator iterable is iterated lazily, as written
    def numbers():
        for i in range(n):
            yield i
            if i == 3:
                raise ValueError("source ended")

    out = []
    for v in numbers():
        out.append(v * v)
    return out


# 5 -- exceptions


def firsts(rows):
    out = []
    for row in rows:
        out.append(next(v for v in row if v < 0))
    return out


class RangeErr(Exception):
    def __init__(self, lo, hi):
        super().__init__(f"outside [{lo}, {hi}]")


def check(xs):
    for x in xs:
        if x > 50:
            raise RangeErr(0, 50)


class Abort(BaseException):
    pass


def collect(xs, out):
    for x in xs:
        out.append(x)
        if x < 0:
            raise Abort(x)


def late_abort(xs, out):  # sibling: a BaseException in a later iteration, partial state kept
    for x in xs:
        out.append(x * 2)
        if x < 0:
            raise Abort(x)
    return out


def stop_in_body(xs):  # sibling: StopIteration raised directly by the body
    out = []
    for x in xs:
        if x == 3:
            raise StopIteration("three")
        out.append(x)
    return out


# 6 -- per-thread state


def recips(xs):
    out = []
    for x in xs:
        out.append(decimal.Decimal(1) / decimal.Decimal(x))
    return out


def alarmed(xs):
    old = signal.signal(signal.SIGALRM, lambda *a: None)
    out = []
    for x in xs:
        out.append(x * 2)
    signal.signal(signal.SIGALRM, old)
    return out


def divide_all(xs):  # sibling: operators on Decimals use the caller's context
    out = []
    for x in xs:
        out.append(x / 7)
    return out


# 7 -- calls assumed pure that are not


def ids_for(names):
    ids = itertools.count(1)
    table = {}
    for name in names:
        table[name] = next(ids)
    return list(table.values())


def warn_each(xs):
    out = []
    for x in xs:
        warnings.warn(f"value {x}", UserWarning)  # noqa: B028 - the loop line, as written
        out.append(x)
    return out


SCALE = 1


def scaled(x):
    return x * SCALE


def with_scale(xs, s):
    global SCALE
    SCALE = s
    out = []
    for x in xs:
        out.append(scaled(x))
    return out


LOG = []


def log_and_double(x):
    LOG.append(x)
    return 2 * x


def uses_logger(xs):  # sibling: a helper that mutates module state
    out = []
    for x in xs:
        out.append(log_and_double(x))
    return out


# 8 -- scope


def getters(n):
    fs = []
    for i in range(n):
        fs.append(lambda: i)  # noqa: B023 - late binding is the point
    return [f() for f in fs]


def squares(n):
    out = []
    for i in range(n):
        out.append(i * i)
    del i
    return len(out)


def last_index(xs):  # sibling: the loop variable read after the loop
    out = []
    for i, x in enumerate(xs):  # noqa: B007 - `i` is read after the loop
        out.append(x + 1)
    return out, i, x


# 9 -- cost


def cheap_sum(n):
    total = 0
    for i in range(n):
        total += i * 3
    return total


def raises_early(n):
    out = []
    for i in range(n):
        if i == 2000:
            raise ValueError("early")
        out.append(i)
    return out


# 10 -- missed


def word_counts(words):
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return counts


def line_lengths(text):
    out = []
    for line in text.splitlines():
        out.append(len(line.strip()))
    return out


def arange_sum(n):
    total = 0.0
    for v in np.arange(n):
        total += float(v) * 0.5
    return total


def two_loops(xs):
    a = []
    for x in xs:
        a.append(x + 1)
    b = []
    for x in xs:
        b.append(x * 2)
    return a, b


TOTAL = 0


def global_total(xs):
    global TOTAL
    for x in xs:
        TOTAL += x
    return TOTAL


def nonlocal_total(xs):
    total = 0

    def add():
        nonlocal total
        for x in xs:
            total += x

    add()
    return total


def grouped(pairs):  # sibling: setdefault(...).append(...) is a keyed collector
    groups = {}
    for k, v in pairs:
        groups.setdefault(k, []).append(v)
    return groups


class Scaler:
    def __init__(self, k):
        self.k = k

    def factor(self, x):
        return self.k * x

    def run(self, xs):
        out = []
        for x in xs:
            time.sleep(0.02)
            out.append(self.factor(x))
        return out


# recursion through decorated functions (their plain twins below give the expected values)
from clustrix import cluster  # noqa: E402


@cluster(parallel=True, cores=2)
def tri(n):
    total = 0
    for i in range(n):
        total += i
    if n > 1:
        total += tri(n - 1)
    return total


def tri_plain(n):
    total = 0
    for i in range(n):
        total += i
    if n > 1:
        total += tri_plain(n - 1)
    return total


@cluster(parallel=True, cores=2)
def ping(n):
    out = []
    for i in range(n):
        out.append(pong(i))
    return out


@cluster(parallel=True, cores=2)
def pong(n):
    total = 0
    for i in range(n):
        total += len(ping(i))
    return total


def ping_plain(n):
    out = []
    for i in range(n):
        out.append(pong_plain(i))
    return out


def pong_plain(n):
    total = 0
    for i in range(n):
        total += len(ping_plain(i))
    return total
