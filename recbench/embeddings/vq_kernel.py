"""The scalar nearest-centroid search of DPQ and MGQE as one C loop (``train.fused_vq=true``).

Why: in PyTorch operators the grid search of ``recbench.embeddings.vq`` (``_ScalarGrid``) is about
twenty passes over the ``B x D`` queries (gathers, comparisons, the bit-pattern decision) plus a
grid build of some forty small operators per table and step; together they are half of a DPQ
training step on CPU and keep it above twice a full step (docs/performance.md, issue 18).
``torch.compile`` does not help there (its gathers are slower than eager ``index_select`` on these
CPUs). This module compiles a small C file with the system's C compiler on first use (about a
second; cached per source and compiler under ``~/.cache/recbench``) and calls it through
``ctypes``: per subspace it builds the same structure (sorted values, lowest index per run of
equal values, tie bits, a grid of cells over ``[min, max]``), and per query it walks from the
query's cell to the first sorted value ``>= q`` and picks the nearer neighbour with the same float
operations and the same bit-pattern tie rule as ``_ScalarGrid.search``. So the codes and chosen
values are the eager ones bit for bit (``tests/embeddings/test_vq_kernel.py``); the kernel only
changes how fast they are found.

Scope: float32 CPU tensors with one dimension per subspace (``D = d``, the paper's setting);
anything else (and centroids holding NaN) takes the eager path. One thread.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from recbench.errors import ConfigError

#: Grid cells per centroid (the C loop walks the few values of a crowded cell one by one).
CELLS_PER_CENTROID = 4

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t bits_of(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }

static inline int32_t cell_of(float x, float low, float scale, int32_t last) {
    float t = (x - low) * scale;            /* monotone in x: one rounding per operation */
    if (!(t > 0.0f)) return 0;              /* also NaN */
    if (t >= (float)last) return last;
    return (int32_t)t;
}

/* queries (B, D) with row stride q_row; centroids (D, K) with strides c_row, c_col;
   codes (B, D) int32 and chosen (B, D) float32, contiguous; work: vq_work_size(D, K, cells)
   4-byte words of scratch (passed in: allocating it here cost page faults on every call).
   Returns 0, or -1 when a subspace holds NaN (the caller then uses the eager search). */
int64_t vq_work_size(int64_t D, int64_t K, int64_t cells) {
    return D * cells + 3 * D * (K + 2) + 2 * K + cells + 2 * D;
}

int vq_scalar_search(const float *queries, int64_t B, int64_t D, int64_t q_row,
                     const float *centroids, int64_t K, int64_t c_row, int64_t c_col,
                     int64_t cells_per_centroid, int32_t *codes, float *chosen, int32_t *work) {
    int64_t cells = cells_per_centroid * K, width = K + 2;
    int32_t *begin = work;
    float *value = (float *)(begin + D * cells);
    int32_t *code = (int32_t *)(value + D * width);
    int32_t *tie = code + D * width;
    int32_t *cell = tie + D * width, *crowd = cell + K, *fill = crowd + K;
    float *low = (float *)(fill + cells), *scale = low + D;
    int status = 0;
    for (int64_t j = 0; j < D && status == 0; j++) {
        const float *c = centroids + j * c_row;
        int32_t *bj = begin + j * cells, *cj = code + j * width, *tj = tie + j * width;
        float *vj = value + j * width;
        float lo = c[0], hi = c[0];
        for (int64_t k = 0; k < K; k++) {
            float x = c[k * c_col];
            if (x != x) { status = -1; break; }
            if (x < lo) lo = x;
            if (x > hi) hi = x;
        }
        if (status) break;
        float sc = (float)cells / (hi - lo);
        if (!isfinite(sc)) sc = 0.0f;
        low[j] = lo; scale[j] = sc;
        /* counting sort by cell; positions 1..K, slot 0 and K+1 hold +inf */
        memset(bj, 0, sizeof(int32_t) * cells);
        int64_t shared = 0;  /* cells holding several values, listed in crowd[] */
        for (int64_t k = 0; k < K; k++) {
            cell[k] = cell_of(c[k * c_col], lo, sc, (int32_t)(cells - 1));
            if (++bj[cell[k]] == 2) crowd[shared++] = cell[k];
        }
        int32_t next = 1;
        for (int64_t g = 0; g < cells; g++) { int32_t n = bj[g]; bj[g] = next; next += n; }
        /* place in index order, then order each cell by value (stable: equal values keep the
           index order), so that the sorted order is (value, index) */
        memcpy(fill, bj, sizeof(int32_t) * cells);
        for (int64_t k = 0; k < K; k++) {
            int32_t p = fill[cell[k]]++;
            vj[p] = c[k * c_col];
            cj[p] = (int32_t)k;
        }
        for (int64_t n = 0; n < shared; n++) {
            int32_t start = bj[crowd[n]], end = fill[crowd[n]];
            for (int32_t p = start + 1; p < end; p++) {
                float v = vj[p]; int32_t id = cj[p]; int32_t r = p - 1;
                while (r >= start && vj[r] > v) { vj[r + 1] = vj[r]; cj[r + 1] = cj[r]; r--; }
                vj[r + 1] = v; cj[r + 1] = id;
            }
        }
        vj[0] = INFINITY; vj[K + 1] = INFINITY; cj[0] = 0; cj[K + 1] = 0;
        /* a run of equal values answers with its lowest index (the first of the run) */
        for (int64_t p = 2; p <= K; p++) cj[p] = vj[p] == vj[p - 1] ? cj[p - 1] : cj[p];
        /* tie bit: the lower neighbour wins an exact tie when its code is the lower one */
        tj[0] = 1; tj[1] = 0; tj[K + 1] = 1;
        for (int64_t p = 2; p <= K; p++) tj[p] = cj[p - 1] < cj[p];
    }
    if (status == 0) {
        /* blocks of rows, subspace by subspace inside a block, so that one subspace's tables
           stay in the L1 cache and the block's rows in L2; the common steps are branch-free (an
           unpredictable branch costs more than the step itself) */
        int32_t last = (int32_t)(cells - 1);
        for (int64_t start = 0; start < B; start += 256) {
            int64_t stop = start + 256 < B ? start + 256 : B;
            for (int64_t j = 0; j < D; j++) {
                const float *vj = value + j * width;
                const int32_t *bj = begin + j * cells, *cj = code + j * width;
                const int32_t *tj = tie + j * width;
                float lo = low[j], sc = scale[j];
                for (int64_t i = start; i < stop; i++) {
                    float q = queries[i * q_row + j];
                    int32_t p = bj[cell_of(q, lo, sc, last)];
                    p += vj[p] < q;
                    while (vj[p] < q) p++;             /* the first sorted value >= q */
                    float up = q - vj[p], dn = q - vj[p - 1];
                    float du = up * up, dl = dn * dn;
                    int64_t diff = (int64_t)(int32_t)bits_of(dl) - (int64_t)(int32_t)bits_of(du);
                    p -= (diff - tj[p]) < 0;           /* the lower neighbour is nearer */
                    codes[i * D + j] = cj[p];
                    chosen[i * D + j] = vj[p];
                }
            }
        }
    }
    return status;
}
"""

#: Compiler flags: no fast-math and no contraction into fused multiply-adds, so that every float
#: operation rounds as PyTorch's elementwise kernels do.
_FLAGS = ["-O2", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math"]

_library: ctypes.CDLL | None = None


def _compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "recbench"


def load() -> ctypes.CDLL:
    """The compiled kernel (compiled on first use, then cached); ``ConfigError`` with the fix when
    there is no C compiler or it fails."""
    global _library
    if _library is not None:
        return _library
    compiler = _compiler()
    if compiler is None:
        raise ConfigError(
            "train.fused_vq=true needs a C compiler (cc, gcc or clang on the PATH, or $CC) to build "
            "the DPQ/MGQE search kernel; install one or set train.fused_vq=false"
        )
    key = hashlib.sha256("\0".join([_SOURCE, compiler, *_FLAGS]).encode()).hexdigest()[:16]
    folder = _cache_dir()
    target = folder / f"vq_kernel-{key}.so"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            source, built = Path(tmp) / "vq_kernel.c", Path(tmp) / "vq_kernel.so"
            source.write_text(_SOURCE)
            done = subprocess.run(
                [compiler, *_FLAGS, str(source), "-o", str(built), "-lm"],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode:
                first = (done.stderr.strip().splitlines() or ["no message"])[0]
                raise ConfigError(
                    f"train.fused_vq=true: compiling the DPQ/MGQE search kernel with {compiler} "
                    f"failed ({first}); fix the compiler or set train.fused_vq=false"
                )
            os.replace(built, target)  # atomic: concurrent runs never load a half-written file
    library = ctypes.CDLL(str(target))
    function = library.vq_scalar_search
    function.restype = ctypes.c_int
    function.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    library.vq_work_size.restype = ctypes.c_int64
    library.vq_work_size.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    _library = library
    return library


_work: Tensor | None = None


def _workspace(words: int) -> Tensor:
    """Scratch of at least ``words`` 4-byte words for the kernel, kept between calls (a fresh
    block of this size would be page-faulted in on every call). One per process: searches run on
    the training thread."""
    global _work
    if _work is None or _work.numel() < words:
        _work = torch.empty(int(words), dtype=torch.int32)
    return _work


def applies(queries: Tensor, centroids: Tensor) -> bool:
    """Whether the kernel handles this search: scalar subspaces, float32, CPU."""
    return (
        centroids.dim() == 3
        and centroids.shape[2] == 1
        and queries.dtype == centroids.dtype == torch.float32
        and queries.device.type == centroids.device.type == "cpu"
    )


def search(queries: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor] | None:
    """Codes ``(B, D)`` int32 and chosen centroids ``(B, D, 1)`` of ``queries (B, D, 1)`` against
    ``centroids (D, K, 1)`` (``applies`` must hold), equal to ``_ScalarGrid.search``; None when a
    centroid is NaN (the eager search then decides)."""
    rows = queries.detach()[..., 0].contiguous()
    table = centroids.detach()[..., 0]
    num_rows, num = rows.shape
    codes = torch.empty(num_rows, num, dtype=torch.int32)
    chosen = torch.empty(num_rows, num, dtype=torch.float32)
    library, k = load(), table.shape[1]
    work = _workspace(library.vq_work_size(num, k, CELLS_PER_CENTROID * k))
    status = library.vq_scalar_search(
        rows.data_ptr(), num_rows, num, rows.stride(0) if num_rows else num,
        table.data_ptr(), k, table.stride(0), table.stride(1),
        CELLS_PER_CENTROID, codes.data_ptr(), chosen.data_ptr(), work.data_ptr(),
    )  # fmt: skip
    if status:
        return None
    return codes, chosen.unsqueeze(-1)
