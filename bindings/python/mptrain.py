"""Train GPT- and LLaMA-style transformer language models with mptrain from Python.

A ctypes layer over mptrain's C ABI (include/mptrain.h, the specification): no dependencies
beyond the standard library and no compiled extension. The shared library is the file named
by MPTRAIN_LIBRARY, else libmptrain.so.1 as the dynamic loader finds it (LD_LIBRARY_PATH,
the system's directories), else the one pkg-config names.

    import mptrain
    with mptrain.Context("recipes/tiny.toml", overrides=["train.train_iters=3"]) as ctx:
        model = ctx.build_model()
        info = model.info()
        rows, cols = info.global_batch_size, info.seq_length + 1
        for _ in range(info.train_iters):
            step = model.train_step(mptrain.Batch([i % 256 for i in range(rows * cols)], rows, cols))
            print(step.iteration, step.lm_loss)
        model.checkpoint("runs/ckpt")

Every failure raises mptrain.Error, which carries the status and the library's message.
A Context and its Model may be used from several threads; their calls are serialised, as the
library requires.
"""

import ctypes
import enum
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass

__all__ = ["Batch", "Context", "Error", "LogLevel", "Model", "ModelInfo", "Status",
           "StepResult", "version", "version_number"]

_ABI = 1  # the SONAME's number: libmptrain.so.1
HEADER_VERSION_NUMBER = 100  # MPT_VERSION_NUMBER of the header these declarations follow


class Status(enum.IntEnum):
    """Why a call failed (mpt_status); a code this module does not know stays an int."""
    OK = 0
    INVALID_ARGUMENT = 1
    INVALID_CONFIG = 2
    NOT_SUPPORTED = 3
    IO = 4
    CORRUPT_DATA = 5
    OUT_OF_MEMORY = 6
    DISTRIBUTED = 7
    DEVICE = 8
    NUMERICAL = 9
    INTERNAL = 10


class LogLevel(enum.IntEnum):
    """How much the library reports; each level includes those above it."""
    OFF = -1
    ERROR = 0
    WARN = 1
    INFO = 2
    DEBUG = 3


class Error(Exception):
    """A failed call: .status (a Status, or an int from a newer library) and .message."""

    def __init__(self, status, message):
        try:
            status = Status(status)
        except ValueError:
            pass
        self.status = status
        self.message = message
        super().__init__(f"{status_string(status)}: {message}")


# ---- the library and its declarations ------------------------------------------------------

_LOG_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p)


class _InitOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("recipe_path", ctypes.c_char_p),
                ("recipe_toml", ctypes.c_char_p),
                ("overrides", ctypes.POINTER(ctypes.c_char_p)),
                ("num_overrides", ctypes.c_size_t),
                ("log_fn", _LOG_FN),
                ("log_user_data", ctypes.c_void_p),
                ("log_level", ctypes.c_int32),
                ("rank", ctypes.c_int32),
                ("world_size", ctypes.c_int32),
                ("local_rank", ctypes.c_int32),
                ("master_addr", ctypes.c_char_p),
                ("master_port", ctypes.c_int32)]


class _Batch(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("tokens", ctypes.POINTER(ctypes.c_int32)),
                ("labels", ctypes.POINTER(ctypes.c_int32)),
                ("loss_mask", ctypes.POINTER(ctypes.c_float)),
                ("rows", ctypes.c_int64),
                ("cols", ctypes.c_int64)]


class _StepResult(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("iteration", ctypes.c_int64),
                ("lm_loss", ctypes.c_double),
                ("grad_norm", ctypes.c_double),
                ("learning_rate", ctypes.c_double),
                ("tokens", ctypes.c_int64),
                ("step_time_s", ctypes.c_double),
                ("consumed_samples", ctypes.c_int64)]


class _ModelInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t)] + [
        (name, ctypes.c_int64) for name in (
            "num_parameters", "iteration", "train_iters", "seq_length", "micro_batch_size",
            "global_batch_size", "vocab_size", "params_bytes", "grads_bytes", "optimizer_bytes",
            "activations_peak_bytes", "expert_params_bytes")]


def _library_candidates():
    explicit = os.environ.get("MPTRAIN_LIBRARY")
    if explicit:
        return [explicit]
    candidates = [f"libmptrain.so.{_ABI}"]
    if shutil.which("pkg-config"):
        found = subprocess.run(["pkg-config", "--variable=libdir", "mptrain"],
                               capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(os.path.join(found.stdout.strip(), f"libmptrain.so.{_ABI}"))
    return candidates


def _load_library():
    failures = []
    for candidate in _library_candidates():
        try:
            return ctypes.CDLL(candidate)
        except OSError as e:
            failures.append(str(e))
    raise ImportError("mptrain: cannot load the shared library (" + "; ".join(failures) +
                      "): set MPTRAIN_LIBRARY to its path, or LD_LIBRARY_PATH to its directory")


def _declare(lib):
    c_ctx, c_model, status = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int
    signatures = {
        "mpt_version": (ctypes.c_char_p, []),
        "mpt_version_number": (ctypes.c_int, []),
        "mpt_status_string": (ctypes.c_char_p, [status]),
        "mpt_init_options_init": (None, [ctypes.POINTER(_InitOptions)]),
        "mpt_init": (status, [ctypes.POINTER(_InitOptions), ctypes.POINTER(c_ctx)]),
        "mpt_set_override": (status, [c_ctx, ctypes.c_char_p]),
        "mpt_config_toml": (status, [c_ctx, ctypes.c_char_p, ctypes.c_size_t,
                                     ctypes.POINTER(ctypes.c_size_t)]),
        "mpt_last_error": (ctypes.c_char_p, [c_ctx]),
        "mpt_finalize": (None, [c_ctx]),
        "mpt_build_model": (status, [c_ctx, ctypes.POINTER(c_model)]),
        "mpt_model_destroy": (None, [c_model]),
        "mpt_model_last_error": (ctypes.c_char_p, [c_model]),
        "mpt_train_step": (status, [c_model, ctypes.POINTER(_Batch), ctypes.POINTER(_StepResult)]),
        "mpt_train": (status, [c_model, ctypes.POINTER(_StepResult)]),
        "mpt_checkpoint": (status, [c_model, ctypes.c_char_p]),
        "mpt_load_checkpoint": (status, [c_model, ctypes.c_char_p]),
        "mpt_model_get_info": (status, [c_model, ctypes.POINTER(_ModelInfo)]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


_lib = _declare(_load_library())
if _lib.mpt_version_number() // 100 != HEADER_VERSION_NUMBER // 100:  # before 1.0, MAJOR.MINOR
    raise ImportError(f"mptrain: the library is {_lib.mpt_version().decode()}, these declarations "
                      f"follow header {HEADER_VERSION_NUMBER // 10000}.{HEADER_VERSION_NUMBER // 100 % 100}")


def version():
    """The library's version, "MAJOR.MINOR.PATCH"."""
    return _lib.mpt_version().decode()


def version_number():
    """The library's version as MAJOR*10000 + MINOR*100 + PATCH."""
    return _lib.mpt_version_number()


def status_string(status):
    """The library's short text for a status ("invalid configuration", ...)."""
    return _lib.mpt_status_string(int(status)).decode()


def _text(value, what):
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    else:
        data = os.fsencode(value)  # a path-like object
    if b"\0" in data:
        raise Error(Status.INVALID_ARGUMENT, f"{what} contains a NUL byte")
    return data


def _place(value, what):
    if value is None:
        return -1
    if not isinstance(value, int) or not 0 <= value < 2**31:
        raise Error(Status.INVALID_ARGUMENT, f"{what} = {value!r} must be an int in [0, 2^31)")
    return value


# ---- handles ---------------------------------------------------------------------------------

class Context:
    """A recipe loaded with its overrides, from which a Model is built.

    Exactly one of recipe_path and recipe_toml (errors name it "<string>"). overrides are
    "section.key=value" strings applied in order. log(level, message) receives each log line
    (instead of stderr) inside the call that logs; it must not call into this context, and
    an exception it raises is raised again from that call. rank, world_size, local_rank,
    master_addr and master_port default to the launcher's environment (torchrun, SLURM or
    Open MPI), else rank 0 of 1. Close it (or use `with`) to free it; a Context left to the
    garbage collector is closed then.
    """

    def __init__(self, recipe_path=None, *, recipe_toml=None, overrides=(), log=None,
                 log_level=LogLevel.INFO, rank=None, world_size=None, local_rank=None,
                 master_addr=None, master_port=None):
        self._handle = None
        self._model = None  # the live model's handle, destroyed with the context
        self._lock = threading.Lock()
        self._caller = None  # the thread inside a library call
        self._log = log
        self._log_error = None
        self._log_fn = _LOG_FN(self._on_log) if log is not None else _LOG_FN()

        opts = _InitOptions()
        _lib.mpt_init_options_init(ctypes.byref(opts))
        if recipe_path is not None:
            opts.recipe_path = _text(recipe_path, "recipe_path")
        if recipe_toml is not None:
            opts.recipe_toml = _text(recipe_toml, "recipe_toml")
        encoded = [_text(o, f"override {o!r}") for o in overrides]
        array = (ctypes.c_char_p * max(len(encoded), 1))(*encoded)
        opts.overrides = ctypes.cast(array, ctypes.POINTER(ctypes.c_char_p)) if encoded else None
        opts.num_overrides = len(encoded)
        opts.log_fn = self._log_fn
        opts.log_level = int(log_level)
        opts.rank = _place(rank, "rank")
        opts.world_size = _place(world_size, "world_size")
        opts.local_rank = _place(local_rank, "local_rank")
        if master_addr is not None:
            opts.master_addr = _text(master_addr, "master_addr")
        opts.master_port = _place(master_port, "master_port")

        handle = ctypes.c_void_p()
        status = _lib.mpt_init(ctypes.byref(opts), ctypes.byref(handle))
        if status != Status.OK:
            message = "mpt_init returned no context"
            if handle.value:
                message = _lib.mpt_last_error(handle).decode(errors="replace")
                _lib.mpt_finalize(handle)
            raise Error(status, message)
        self._handle = handle

    def _on_log(self, _user_data, level, message):
        if self._log_error is None:
            try:
                self._log(LogLevel(min(max(level, 0), 3)),
                          message.decode(errors="replace") if message else "")
            except BaseException as e:  # raised again when the library call returns
                self._log_error = e
        return 0

    def _call(self, fn, *args):
        """Runs one library call on this context, serialised; raises Error on failure."""
        if self._caller == threading.get_ident():
            raise Error(Status.INVALID_ARGUMENT,
                        "a call into the context from its own log callback")
        with self._lock:
            if self._handle is None:
                raise Error(Status.INVALID_ARGUMENT, "the context is closed")
            self._caller = threading.get_ident()
            try:
                status = fn(*args)
            finally:
                self._caller = None
            if self._log_error is not None:
                error, self._log_error = self._log_error, None
                raise error
            if status != Status.OK:
                raise Error(status, _lib.mpt_last_error(self._handle).decode(errors="replace"))

    def set_override(self, assignment):
        """Applies "section.key=value" to the recipe; only while the context has no model."""
        self._call(lambda: _lib.mpt_set_override(self._handle, _text(assignment, "override")))

    def config_toml(self):
        """The resolved recipe, every default filled in, as TOML that loads back to the same."""
        needed = ctypes.c_size_t(0)
        try:
            self._call(lambda: _lib.mpt_config_toml(self._handle, None, 0, ctypes.byref(needed)))
        except Error as e:
            if e.status != Status.INVALID_ARGUMENT or needed.value == 0:
                raise
        buf = ctypes.create_string_buffer(needed.value)
        self._call(lambda: _lib.mpt_config_toml(self._handle, buf, len(buf), ctypes.byref(needed)))
        return buf.value.decode()

    def build_model(self):
        """Validates the recipe and builds this rank's Model (one per context at a time)."""
        handle = ctypes.c_void_p()
        try:
            self._call(lambda: _lib.mpt_build_model(self._handle, ctypes.byref(handle)))
        except BaseException:
            if handle.value:  # built, but the log callback raised: nobody would own it
                _lib.mpt_model_destroy(handle)
            raise
        self._model = handle.value
        return Model(self, handle)

    def close(self):
        """Frees the context and its model. Closing twice is harmless."""
        with self._lock:
            if self._handle is not None:
                _lib.mpt_finalize(self._handle)
                self._handle = None
                self._model = None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            self.close()


@dataclass(frozen=True)
class StepResult:
    iteration: int          # iterations completed, this one included
    lm_loss: float          # mean over micro-batches of the per-token mean loss
    grad_norm: float        # global L2 norm of the gradients before clipping
    learning_rate: float
    tokens: int             # tokens in the global batch
    step_time_s: float
    consumed_samples: int   # samples consumed after this step

    @classmethod
    def _from(cls, r):
        return cls(*(getattr(r, name) for name, _ in _StepResult._fields_[1:]))


@dataclass(frozen=True)
class ModelInfo:
    num_parameters: int
    iteration: int
    train_iters: int
    seq_length: int
    micro_batch_size: int
    global_batch_size: int
    vocab_size: int
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_peak_bytes: int
    expert_params_bytes: int


def _array(ctype, values, count, what):
    """A ctypes array of exactly `count` values: copied from a buffer of the same C type
    (array.array('i') or 'f', a numpy int32 or float32 array) or from any sequence of numbers."""
    try:
        view = memoryview(values)
    except TypeError:
        view = None
    same_type = {ctypes.c_int32: "il", ctypes.c_float: "f"}[ctype]
    if (view is not None and view.itemsize == ctypes.sizeof(ctype) and view.format.lstrip("@=<") in
            same_type and view.c_contiguous):
        if view.nbytes != count * view.itemsize:
            raise Error(Status.INVALID_ARGUMENT,
                        f"Batch: {what} holds {view.nbytes // view.itemsize} values, needs {count}")
        return (ctype * count).from_buffer_copy(view)
    values = list(values)
    if len(values) != count:
        raise Error(Status.INVALID_ARGUMENT, f"Batch: {what} holds {len(values)} values, needs {count}")
    try:
        return (ctype * count)(*values)
    except TypeError as e:
        raise Error(Status.INVALID_ARGUMENT, f"Batch: {what}: {e}") from None


class Batch:
    """A global batch (this rank's share) supplied by the host, row-major.

    tokens holds rows x cols ids; without labels, cols is seq_length + 1 and the labels are
    the tokens shifted by one; with them, cols is seq_length and labels holds rows x cols.
    loss_mask (rows x seq_length, optional) weights each target. Each may be a flat sequence
    of numbers or a buffer of int32 (float32 for loss_mask) values, copied here once.
    """

    def __init__(self, tokens, rows, cols, labels=None, loss_mask=None):
        if rows <= 0 or cols <= 0:
            raise Error(Status.INVALID_ARGUMENT, f"Batch: rows {rows} and cols {cols} must be positive")
        self.rows, self.cols = rows, cols
        self._tokens = _array(ctypes.c_int32, tokens, rows * cols, "tokens")
        self._labels = None if labels is None else _array(ctypes.c_int32, labels, rows * cols, "labels")
        seq_length = cols if labels is not None else cols - 1
        self._loss_mask = (None if loss_mask is None else
                           _array(ctypes.c_float, loss_mask, rows * seq_length, "loss_mask"))
        self._c = _Batch(ctypes.sizeof(_Batch), self._tokens, self._labels, self._loss_mask, rows, cols)


class Model:
    """This rank's model, optimizer state and data stream, built by Context.build_model."""

    def __init__(self, context, handle):
        self._context = context
        self._handle = handle

    def _call(self, fn, *args):
        if self._handle is None or self._context._model != self._handle.value:
            raise Error(Status.INVALID_ARGUMENT, "the model is closed")
        self._context._call(fn, *args)

    def train_step(self, batch=None):
        """One training step on a Batch, or on the recipe's next batch for None. After an
        Error other than INVALID_ARGUMENT the model's state is unspecified."""
        out = _StepResult(ctypes.sizeof(_StepResult))
        c_batch = ctypes.byref(batch._c) if batch is not None else None
        self._call(_lib.mpt_train_step, self._handle, c_batch, ctypes.byref(out))
        return StepResult._from(out)

    def train(self):
        """The recipe's training loop to train.train_iters; the last step's result."""
        out = _StepResult(ctypes.sizeof(_StepResult))
        self._call(_lib.mpt_train, self._handle, ctypes.byref(out))
        return StepResult._from(out)

    def checkpoint(self, directory=None):
        """Saves into directory/iter_XXXXXXX (None: the recipe's checkpoint.save)."""
        path = None if directory is None else _text(directory, "checkpoint directory")
        self._call(_lib.mpt_checkpoint, self._handle, path)

    def load_checkpoint(self, directory):
        """Loads an iter_XXXXXXX directory, or a save directory's latest checkpoint."""
        self._call(_lib.mpt_load_checkpoint, self._handle, _text(directory, "checkpoint directory"))

    def info(self):
        """The model's sizes and position."""
        out = _ModelInfo(ctypes.sizeof(_ModelInfo))
        self._call(_lib.mpt_model_get_info, self._handle, ctypes.byref(out))
        return ModelInfo(*(getattr(out, name) for name, _ in _ModelInfo._fields_[1:]))

    def close(self):
        """Destroys the model; its context may then build another. Closing twice, or after
        the context, is harmless."""
        ctx = self._context
        with ctx._lock:
            if self._handle is not None and ctx._handle is not None and ctx._model == self._handle.value:
                _lib.mpt_model_destroy(self._handle)
                ctx._model = None
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            self.close()
