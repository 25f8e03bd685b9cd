"""Realistic loop functions for the loop-parallelisation tests (kept in a file: source needed)."""

import math
import random

import numpy as np

GLOBAL_LOG = []


def work(x):
    return x * x + 1


def sum_squares(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def float_sum(xs):
    total = 0.0
    for x in xs:
        total += math.sin(x) / 3.0
    return total


def build_list(n):
    out = []
    for i in range(n):
        out.append(work(i))
    return out


def build_dict(n):
    d = {}
    for i in range(n):
        d[i] = str(i) * 2
    return d


def dict_items(d):
    out = {}
    for k, v in d.items():
        out[k] = v * 3
    return out


def enumerate_zip(a, b):
    res = []
    for i, (x, y) in enumerate(zip(a, b)):
        res.append(i * x - y)
    return res


def product(n):
    p = 1
    for i in range(1, n):
        p *= i % 7 + 1
    return p


def max_min(xs):
    hi = -1e9
    lo = 1e9
    for x in xs:
        hi = max(hi, x * 2)
        lo = min(lo, x - 1)
    return hi, lo


def bit_ops(n):
    acc_or = 0
    acc_and = -1
    for i in range(n):
        acc_or |= i
        acc_and &= ~i | 1
    return acc_or, acc_and


def acc_assign(n):
    acc = 0
    for i in range(n):
        acc = acc + i * 3
    return acc


def string_concat(n):
    s = ""
    for i in range(n):
        s += str(i)
    return s


def histogram(xs):
    counts = {k: 0 for k in range(10)}
    for x in xs:
        counts[x % 10] += 1
    return counts


def with_continue(n):
    out = []
    for i in range(n):
        if i % 3 == 0:
            continue
        out.append(i)
    return out


def nested_matrix(n, m):
    rows = []
    for i in range(n):
        row = []
        for j in range(m):
            row.append(i * j)
        rows.append(row)
    return rows


def nested_sum(n):
    total = 0
    for i in range(n):
        s = 0
        for j in range(i):
            s += j
        total += s
    return total


def extend_gen(n):
    out = []
    for i in range(n):
        out.extend(i * k for k in range(3))
    return out


def private_temps(xs, scale):
    out = []
    for x in xs:
        y = x * scale
        z = y + 1
        out.append(z * y)
    return out


def conditional_private(xs):
    out = []
    for x in xs:
        if x > 2:
            y = x
        else:
            y = -x
        out.append(y)
    return out


def set_collect(xs):
    seen = set()
    for x in xs:
        seen.add(x % 5)
    return seen


def closure_maker(k):
    def inner(n):
        out = []
        for i in range(n):
            out.append(i + k)
        return out

    return inner


closure_fn = closure_maker(5)


class Model:
    def __init__(self, w):
        self.w = w

    def predict(self, x):
        return self.w * x

    def run(self, xs):
        out = []
        for x in xs:
            out.append(self.predict(x))
        return out

    def bad(self, xs):
        for x in xs:
            self.w = x
        return self.w


def numpy_rng_private(n):
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        out.append(float(rng.random()))
    return out


def lambda_sort(rows):
    out = []
    for i in range(len(rows)):
        out.append(sorted(rows[i], key=lambda r: -r))
    return out


def try_inside(xs):
    out = []
    for x in xs:
        try:
            v = 10 // x
        except ZeroDivisionError:
            v = 0
        out.append(v)
    return out


# ---------------------------------------------------------------- sequential ones


def early_exit(xs):
    found = None
    for x in xs:
        if x > 3:
            found = x
            break
    return found


def returns_inside(xs):
    for x in xs:
        if x > 3:
            return x
    return None


def recurrence(n):
    x = 1.0
    for _ in range(n):
        x = math.cos(x)
    return x


def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def uses_random(n):
    out = []
    for _ in range(n):
        out.append(random.random())
    return out


def uses_np_random(n):
    out = []
    for _ in range(n):
        out.append(np.random.rand())
    return out


def prints(n):
    for i in range(n):
        print(i)


def writes_file(path, n):
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(str(i))


def while_loop(n):
    i = 0
    while i < n:
        i += 1
    return i


def reads_accumulator(n):
    total = 0
    for i in range(n):
        total += i
        if total > 10:
            total = 0
    return total


def global_stmt(n):
    global GLOBAL_LOG
    for i in range(n):
        GLOBAL_LOG = [i]


def mutates_outer(xs):
    for x in xs:
        x.sort()
    return xs


def pop_outer(stack, n):
    out = []
    for _ in range(n):
        out.append(stack.pop())
    return out


def uses_after(n):
    for i in range(n):
        last = i * 2
    return last


def prev_element(n):
    out = [0] * n
    for i in range(1, n):
        out[i] = out[i - 1] + i
    return out


def alias_mutation(data, n):
    for i in range(n):
        row = data
        row.append(i)
    return data


def attribute_store(obj, n):
    for i in range(n):
        obj.value = i
    return obj


def generator_fn(n):
    for i in range(n):
        yield i * 2


def for_else(xs):
    out = []
    for x in xs:
        out.append(x)
    else:
        out.append(-1)
    return out


def side_effect_range(counter):
    out = []
    for i in range(counter()):
        out.append(i)
    return out


def fails_at(xs):
    out = []
    for x in xs:
        out.append(10 // x)
    return out


def fails_key(keys, table):
    out = []
    for k in keys:
        out.append(table[k])
    return out


def bound_after_loop(xs):
    out = []
    for x in xs:
        if x > 100:
            out.append(limit)  # never reached for small x; `limit` is bound only later
        out.append(x)
    limit = len(out)
    return out, limit


def bound_on_both_branches(xs, flag):
    if flag:
        scale = 2
    else:
        scale = 3
    with open(__file__) as handle:
        first = handle.readline()
    out = []
    for x in xs:
        out.append((x * scale, first[:1]))
    return out
