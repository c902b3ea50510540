"""nearcast: the node, its command line and the fleet's glue."""

import os

# numpy's OpenBLAS starts a thread per core when numpy is imported, and nearcast does
# no linear algebra: with one, every process that imports nearcast (the node, each
# transcode worker, `nearcast transcode`) starts 30-60 ms of CPU sooner and keeps no
# idle BLAS threads and their buffers. A value the user set is kept. This runs before
# anything in the package imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
