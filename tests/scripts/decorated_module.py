"""An importable module with decorated functions (its folder is put on sys.path to use it)."""

from clustrix import cluster


@cluster(cores=1)
def triple(x):
    return 3 * x


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    @cluster(executor="threads")
    def scale(self, x):
        return self.factor * x
