"""The options every onnxruntime session mmedge opens gets: session config entries, thread counts and the
graph optimization level by name. Kept apart from ``session`` so that the EP probe in ``providers`` uses them too."""

from __future__ import annotations

from pathlib import Path

# ORT's graph optimization levels by the names recipes use.
OPTIMIZATION_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


# Session config entries every mmedge session carries (a caller's ``config`` wins). Denormal floats (below 1.2e-38)
# are flushed to zero: a padding mask adds a large negative score before each Softmax, onnxruntime's float exp then
# yields a denormal on every padded position, and x86 cores handle those in microcode, many times slower than normal
# floats (benchmarks/denormals.py measures it). onnxruntime applies this to the calling thread once per process, at
# its first session; every mmedge session asks for it, so the first one decides. The manifest records it.
DEFAULT_SESSION_CONFIG = {"session.set_denormal_as_zero": "1"}


def session_options(
    threads: int = 0,
    *,
    level: str | None = None,
    optimized_path: str | Path | None = None,
    profile_prefix: str | None = None,
    config: dict[str, str] | None = None,
):
    """``onnxruntime.SessionOptions`` as mmedge makes every session: ORT's own warnings off (they would interleave
    with mmedge's one-sentence errors); ``threads`` intra-op threads and one inter-op thread (0: ORT's defaults),
    since batch-1 edge timing is most stable that way; ``level`` one of OPTIMIZATION_LEVELS (None: ORT's default,
    all); ``optimized_path`` to write the graph as optimized; ``profile_prefix`` to profile; ``config`` session
    config entries over DEFAULT_SESSION_CONFIG."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if level is not None:
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[level])
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    for key, value in {**DEFAULT_SESSION_CONFIG, **(config or {})}.items():
        opts.add_session_config_entry(key, value)
    return opts
