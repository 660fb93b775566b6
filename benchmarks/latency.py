"""Latency of the engine vs ONNX Runtime, OpenVINO and PyTorch eager, same weights, one run.

A seeded PyTorch MobileNetV2 (tests/torch_reference.py, torchvision's layout) is saved as a
state_dict, converted to mnv2.h5 and loaded by the engine in four modes (t=1 materialized,
t=4 sliced, rows row-streamed, rows with t=4); the same model is exported to ONNX for ONNX
Runtime and OpenVINO (CPU device, f32 precision hint, latency hint; skipped, with a note,
where the openvino package is absent). Every runtime's logits are checked against
PyTorch's first, and again for every thread count and batch size just before
it is timed (benchmarks/_check.py). Every runtime is timed at batch 1 and 32 with 1 and 2 threads,
round-robin over runs (the order rotated each run) so a noisy moment hits all of them
alike; medians are reported. A table on stdout, with the SIMD target the engine was
compiled for, and a bar chart, latency.png (where matplotlib is installed).

Then the quantized files of the shared data folder (../shared/data or $MNV2_TEST_DATA;
left out, with a note, where absent): LiteRT with its default delegate (XNNPACK) at 1
and 2 threads and with its built-in kernels alone, against the engine in integer and in
float32 (quantized=False) at 1 and 2 threads, batch 1, round-robin as above; the engine's integer logits
checked against LiteRT's reference kernels (equal) first.

    python benchmarks/latency.py [--runs 60] [--big-runs 9] [--quick] [--blocked] [--quantized-only] [--out benchmarks/out]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from _check import check

ROOT = Path(__file__).resolve().parent.parent
THREADS = (1, 2)
BATCHES = (1, 32)
ENGINE_MODES = (("engine t=1", dict(t=1)), ("engine t=4", dict(t=4)),
                ("engine rows", dict(rows=True)), ("engine rows,t=4", dict(rows=True, t=4)))
ORT, OPENVINO, TORCH = "onnxruntime", "openvino", "pytorch eager"


def load_torch_reference():
    spec = importlib.util.spec_from_file_location("torch_reference", ROOT / "tests" / "torch_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_name() -> str:
    name = None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), None)
    except (OSError, subprocess.SubprocessError):
        pass
    if not name:
        try:
            with open("/proc/cpuinfo") as f:
                name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
        except OSError:
            pass
    return name or platform.processor() or "unknown CPU"


def cores_text() -> str:
    """'2 cores' from lscpu (cores per socket x sockets), else the logical CPU count."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        f = {k.strip(): v.strip() for k, v in (l.split(":", 1) for l in out.splitlines() if ":" in l)}
        cores = int(f["Core(s) per socket"]) * int(f["Socket(s)"])
        threads = cores * int(f.get("Thread(s) per core", "1"))
        return f"{cores} cores" + (f", {threads} threads" if threads != cores else "")
    except (OSError, subprocess.SubprocessError, KeyError, ValueError):
        return f"{os.cpu_count()} logical CPUs"


def export_onnx(model, path: Path, size: int) -> str:
    """NCHW input with a dynamic batch axis, opset 17, one self-contained file, by the
    TorchScript exporter: the same graph for ONNX Runtime and OpenVINO in every run
    (torch.export's, the default where onnxscript is installed, writes opset 18 with
    its weights in a second file, and would change the peers' graph with the install)."""
    import torch
    x = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():  # "legacy TorchScript-based exporter" deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return "TorchScript exporter (dynamo=False)"


def ort_session(onnx_model: bytes, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_model, so, providers=["CPUExecutionProvider"])


def openvino_runner(onnx_path: Path, threads: int):
    """A callable running the ONNX model on OpenVINO's CPU plugin with `threads` threads, or
    None where openvino is not installed. f32 precision hint: on CPUs with bf16 or fp16
    support the plugin would otherwise lower the precision, and the numbers would not
    compare with float32 runtimes."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1})
    request = compiled.create_infer_request()

    def run(x_nchw):
        request.infer({0: x_nchw})
        return request.get_output_tensor(0).data
    return run


def busy_seconds() -> tuple[float, float]:
    """(CPU seconds all processes spent busy, CPU seconds this process spent) so far;
    their difference over an interval is the load other processes put on the machine."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan")
    t = os.times()
    return busy, t.user + t.system


def set_threads(n: int):
    """torch's intra-op threads (ONNX Runtime's are a session option, the engine's Engine(threads=n))."""
    import torch
    torch.set_num_threads(n)
    if torch.get_num_threads() != n:
        raise RuntimeError(f"asked torch for {n} threads, got {torch.get_num_threads()}")


SETTLE = 0.05  # seconds of sleep before each runtime's turn (see time_round_robin)


def time_round_robin(fns: dict, runs: int, warmup: int, turn_warmup: int = 0,
                     interleave: bool = True) -> dict[str, list[float]]:
    """Seconds of each timed call of each fn. Each run gives every fn one turn, the order
    rotated each run, so a noisy moment hits all of them alike.

    A turn is: sleep SETTLE, `turn_warmup` untimed calls, one timed call. Without this,
    interleaving measures the runtimes disturbing each other, not themselves: after a
    call, ONNX Runtime's pool workers and torch's OpenMP workers keep spinning for a few
    ms, and on 2 cores that halves the next runtime's speed (torch at 2 threads measured
    25-33 ms after ONNX Runtime, 12-13 ms back to back). The sleep lets the previous
    runtime's workers park; the untimed call wakes this runtime's own workers, as a loop
    of back-to-back calls would have them. It also absorbs a memory effect: torch's eager
    batch-32 call maps and unmaps ~2 GB (500k page faults), and the next large
    allocation in the process (the engine's 184 MiB t=1 arena, which numpy backs with
    transparent huge pages) then pays 0.3-0.5 s of kernel compaction, once.
    interleave=False: each fn's runs back to back instead, to see what interleaving changes.
    """
    names = list(fns)
    if not interleave:
        return {n: time_round_robin({n: fns[n]}, runs, warmup, 0)[n] for n in names}
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for r in range(runs):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            if len(names) > 1:
                time.sleep(SETTLE)
                for _ in range(turn_warmup):
                    fns[n]()
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60, help="timed runs at batch 1 (default 60)")
    ap.add_argument("--big-runs", type=int, default=9, help="timed runs at batch 32 (default 9)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 runs at batch 1, 1 at batch 32")
    ap.add_argument("--blocked", action="store_true",
                    help="time each runtime's runs back to back instead of round-robin")
    ap.add_argument("--quantized-only", action="store_true", help="only the quantized files against LiteRT")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.big_runs = 3, 1
    if not args.quantized_only:
        float_section(args)
    quantized_section(args)


def float_section(args):
    start = time.perf_counter()

    import numba
    import onnxruntime as ort
    import torch
    from mnv2engine import Engine, convert
    from mnv2engine.kernels.target import current
    from mnv2engine.summary import layer_table

    size, ncpu = 224, os.cpu_count()
    tr = load_torch_reference()
    model = tr.randomized(tr.MobileNetV2(num_classes=1000, width_mult=1.0), seed=0)
    engines = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(model.state_dict(), tmp / "mnv2.pth")
        convert(tmp / "mnv2.pth", tmp / "mnv2.h5", size=size)
        for name, kw in ENGINE_MODES:
            engines[name] = Engine.load(tmp / "mnv2.h5", **kw)
        engine_kw = dict(ENGINE_MODES)
        exporter = export_onnx(model, tmp / "mnv2.onnx", size)
        onnx_model = (tmp / "mnv2.onnx").read_bytes()
        openvino = {threads: openvino_runner(tmp / "mnv2.onnx", threads) for threads in THREADS}
    peers = [ORT] + ([OPENVINO] if openvino[1] else []) + [TORCH]

    arch = engines["engine t=1"].arch
    macs = sum(r.macs for r in layer_table(arch))
    print(f"MobileNetV2 {arch.alpha}/{arch.size[0]}, {arch.classes} classes, padding {arch.padding}: "
          f"{macs / 1e6:.1f}M multiply-adds per image (mnv2engine.summary.layer_table)")
    print(f"CPU: {cpu_name()}, {cores_text()}; python {platform.python_version()}, numpy {np.__version__}, "
          f"numba {numba.__version__}, torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"ONNX: opset 17, NCHW, {exporter}")
    print(f"engine compiled for: {current().describe()}  (AVX-512 on this CPU: "
          f"{'yes' if 'avx512f' in cpu_flags() else 'no'})")
    if not openvino[1]:
        print("OpenVINO: not installed (pip install openvino, or the project's [bench] extra); left out")
    else:
        import openvino as ov
        print(f"OpenVINO {ov.__version__}: CPU plugin, f32 precision hint, latency hint, same ONNX file")

    # -- correctness: a speed comparison of different results means nothing ------------
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, *arch.size, 3)).astype(np.float32)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    with torch.inference_mode():
        ref = model(torch.from_numpy(x_nchw)).numpy().astype(np.float64)
    assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max(), "reference ignores its input"
    checks = {name: e.forward(x) for name, e in engines.items()}
    checks[ORT] = ort_session(onnx_model, 1).run(None, {"input": x_nchw})[0]
    if openvino[1]:
        checks[OPENVINO] = openvino[1](x_nchw).copy()
    check("PyTorch logits (batch 2)", [(name, got, ref) for name, got in checks.items()])
    del checks, x, x_nchw

    set_threads(THREADS[0])
    # -- timing --------------------------------------------------------------------------
    results = {}  # (name, threads, batch) -> median seconds
    background = {}  # (threads, batch) -> CPUs used by other processes while timing
    spread = {}  # (name, threads, batch) -> (10th, 90th percentile) seconds
    for threads in THREADS:
        set_threads(threads)
        # Engine(threads=n): n threads share one image, or split a batch of n or more
        engines = {name: Engine(e.weights, threads=threads, **engine_kw[name]) for name, e in engines.items()}
        sess = ort_session(onnx_model, threads)  # one at a time: each keeps a memory arena
        for batch in BATCHES:
            x = rng.uniform(-1, 1, (batch, *arch.size, 3)).astype(np.float32)
            x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            x_torch = torch.from_numpy(x_nchw)

            def run_torch():
                with torch.inference_mode():
                    model(x_torch)

            fns = {ORT: lambda: sess.run(None, {"input": x_nchw}), TORCH: run_torch}
            if openvino[threads]:
                fns[OPENVINO] = lambda run=openvino[threads]: run(x_nchw)
            fns.update({name: (lambda e=e: e.forward(x)) for name, e in engines.items()})
            with torch.inference_mode():  # the very engines, threads and batch about to be timed
                want = model(x_torch).numpy()
            outputs = {ORT: sess.run(None, {"input": x_nchw})[0], **{n: e.forward(x) for n, e in engines.items()}}
            if openvino[threads]:
                outputs[OPENVINO] = openvino[threads](x_nchw).copy()
            check(f"PyTorch logits (threads={threads}, batch={batch})", [(n, o, want) for n, o in outputs.items()])
            del outputs, want
            runs, warmup = (args.runs, 3) if batch == 1 else (args.big_runs, 1)
            (busy0, own0), wall0 = busy_seconds(), time.perf_counter()
            for name, secs in time_round_robin(fns, runs, warmup, 1, not args.blocked).items():
                results[name, threads, batch] = float(np.median(secs))
                spread[name, threads, batch] = (np.percentile(secs, 10), np.percentile(secs, 90))
            (busy1, own1), wall = busy_seconds(), time.perf_counter() - wall0
            other = ((busy1 - busy0) - (own1 - own0)) / wall
            background[threads, batch] = other
            print(f"  timed threads={threads} batch={batch}: {runs} runs after {warmup} warm-up in {wall:.0f} s; "
                  f"other processes used {max(other, 0):.2f} of {ncpu} CPUs meanwhile "
                  f"({time.perf_counter() - start:.0f} s elapsed)", flush=True)
            del fns, x, x_nchw, x_torch
        del sess

    report(results, spread, macs, args, peers)
    if max(background.values()) > 0.1:
        print(f"WARNING: other processes used up to {max(background.values()):.2f} CPUs during the timing; "
              f"the numbers (above all the 2-thread ones) are disturbed: rerun on a quiet machine")
    plot(results, args, cpu_name(), cores_text(), peers, current().isa)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process: {peak_mib:.0f} MiB; total time {time.perf_counter() - start:.1f} s")


MODELS = ("tf2_mobilenet_v2_1.0_224_ptq.tflite", "mobilenet_v2_1.0_224_quant.tflite")


def quantized_section(args):
    """The quantized files: LiteRT against the engine in integer and in float32, batch 1."""
    from mnv2engine import Engine
    from mnv2engine.kernels.target import current
    data = Path(os.environ.get("MNV2_TEST_DATA", ROOT.parent / "shared" / "data"))
    if not (data / "models").is_dir():
        print(f"\nquantized files: {data / 'models'} not found (set MNV2_TEST_DATA); left out")
        return
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        print("\nquantized files: LiteRT is not installed (pip install ai-edge-litert); left out")
        return
    print(f"\nquantized files, batch 1; engine compiled for: {current().describe()}; "
          f"AVX-512 VNNI on this CPU: {'yes' if 'avx512_vnni' in cpu_flags() else 'no'}")
    rng = np.random.default_rng(0)
    for model in MODELS:
        path = data / "models" / model
        x = rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)

        def interpreter(kind, threads, preserve=False):
            it = litert.Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=kind,
                                    experimental_preserve_all_tensors=preserve)
            it.allocate_tensors()
            index = it.get_input_details()[0]["index"]
            return it, lambda: (it.set_tensor(index, x), it.invoke())
        kinds = litert.OpResolverType
        engine = Engine.load(path)
        reference, run_reference = interpreter(kinds.BUILTIN_REF, 1, preserve=True)
        run_reference()
        out = reference.get_output_details()[0]
        logits_index = out["index"]
        want = reference.get_tensor(logits_index)[0]
        got = engine.classify(x, top=engine.arch.classes)[0]
        mine = np.zeros(engine.arch.classes)
        for i, _, p in got:
            mine[i] = p
        scale, zero = out["quantization"]
        off = np.abs(mine - (want.astype(np.float64) - zero) * scale).max()
        print(f"  {model}: engine (integer) probabilities vs LiteRT's reference kernels: max |diff| {off:.4f} "
              f"({'OK' if off <= 1 / 256 + 1e-9 else 'FAIL'}, within 1/256)")
        if off > 1 / 256 + 1e-9:
            raise SystemExit("the integer engine disagrees with LiteRT's reference kernels: not timed")
        fns = {}
        for threads in THREADS:
            fns[f"LiteRT XNNPACK, {threads} thr"] = interpreter(kinds.AUTO, threads)[1]
        fns["LiteRT built-in, 1 thr"] = interpreter(kinds.BUILTIN_WITHOUT_DEFAULT_DELEGATES, 1)[1]
        for threads in THREADS:
            integer = engine if threads == 1 else Engine.load(path, threads=threads)
            fns[f"engine integer, {threads} thr"] = lambda e=integer: e.forward(x)
        for threads in THREADS:
            floats = Engine.load(path, quantized=False, threads=threads)
            fns[f"engine float32, {threads} thr"] = lambda e=floats, xf=x.astype(np.float32) / 127.5 - 1: e.forward(xf)
        times = time_round_robin(fns, args.runs, 3, 1, not args.blocked)
        best = min(np.median(times[f"LiteRT XNNPACK, {t} thr"]) for t in THREADS)
        print(f"  {'runtime':<26} {'median ms':>10} {'x best LiteRT':>14}")
        for name, secs in times.items():
            print(f"  {name:<26} {1e3 * np.median(secs):>10.2f} {np.median(secs) / best:>13.2f}x")


def report(results, spread, macs, args, peers):
    names = peers + [n for n, _ in ENGINE_MODES]
    print()
    print(f"median latency; batch 1: {args.runs} runs, batch 32: {args.big_runs} runs, "
          f"{'back to back' if args.blocked else 'interleaved round-robin'} after warm-up")
    if not args.blocked:
        print(f"each turn: {1e3 * SETTLE:.0f} ms sleep, one untimed call, the timed call")
    print("x ORT / x OpenVINO / x torch / x best engine = this latency divided by theirs (>1 = slower)")
    ratio_heads = "".join(f" {'x ' + short:>{width}}" for short, width in _ratio_columns(peers))
    head = (f"{'runtime/mode':<16} {'thr':>3} {'batch':>5} {'median ms':>10} {'p10-p90 ms':>15} {'images/s':>9} "
            f"{'GMAC/s':>7}{ratio_heads} {'x best engine':>14}")
    print(head)
    print("-" * len(head))
    for threads in THREADS:
        for batch in BATCHES:
            best_engine = min(results[n, threads, batch] for n, _ in ENGINE_MODES)
            for name in names:
                sec = results[name, threads, batch]
                lo, hi = spread[name, threads, batch]
                line = (f"{name:<16} {threads:>3} {batch:>5} {1e3 * sec:>10.2f} {f'{1e3 * lo:.1f}-{1e3 * hi:.1f}':>15} "
                        f"{batch / sec:>9.1f} "
                        f"{macs * batch / sec / 1e9:>7.2f}")
                if name.startswith("engine"):
                    line += "".join(f" {sec / results[peer, threads, batch]:>{width - 1}.2f}x"
                                    for peer, (_, width) in zip(peers, _ratio_columns(peers)))
                    line += f" {sec / best_engine:>13.2f}x"
                print(line)
            print()
    print("engine's best mode per setting:")
    for threads in THREADS:
        for batch in BATCHES:
            name = min((n for n, _ in ENGINE_MODES), key=lambda n: results[n, threads, batch])
            sec = results[name, threads, batch]
            vs = ", ".join(f"{sec / results[peer, threads, batch]:.2f}x {short}"
                           for peer, (short, _) in zip(peers, _ratio_columns(peers)))
            print(f"  threads={threads} batch={batch:>2}: {name:<16} {1e3 * sec / batch:7.2f} ms/image  "
                  f"{macs * batch / sec / 1e9:6.2f} GMAC/s  ({vs})")
    print("speed-up from 1 to 2 threads:")
    for name in names:
        print(f"  {name:<16} " + "  ".join(f"batch {batch}: {results[name, 1, batch] / results[name, 2, batch]:.2f}x"
                                           for batch in BATCHES))


def _ratio_columns(peers):
    """(short name, column width) of the ratio against each peer."""
    short = {ORT: "ORT", OPENVINO: "OpenVINO", TORCH: "torch"}
    return [(short[p], max(7, len(short[p]) + 3)) for p in peers]


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), []))
    except OSError:
        return set()


def plot(results, args, cpu, cores, peers, isa):
    try:
        import matplotlib
    except ImportError:
        print("plot: skipped, matplotlib is not installed (pip install matplotlib, or the [plots] extra)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = peers + [n for n, _ in ENGINE_MODES]
    palette = {ORT: "tab:green", OPENVINO: "tab:red", TORCH: "tab:orange"}
    colors = [palette[p] for p in peers] + ["tab:blue", "tab:cyan", "tab:purple", "tab:pink"]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    width = 0.8 / len(names)
    for i, (name, color) in enumerate(zip(names, colors)):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(THREADS))]
        ms = [1e3 * results[name, t, 1] for t in THREADS]
        bars = ax.bar(xs, ms, width * 0.95, label=name, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_xticks(range(len(THREADS)), [f"{t} thread{'s' * (t > 1)}" for t in THREADS])
    ax.set_xlabel("threads per runtime (ORT intra-op / torch.set_num_threads / Engine(threads=n))")
    ax.set_ylabel("median latency, batch 1 (ms)")
    ax.set_ylim(0, 1.4 * max(1e3 * results[n, t, 1] for n in names for t in THREADS))  # room for the legend
    ax.set_title(f"MobileNetV2 1.0/224 float32, batch 1, median of {args.runs} {'back-to-back' if args.blocked else 'interleaved'} runs\n"
                 f"{cpu}, {cores}; engine compiled for {isa}")
    ax.legend(fontsize=9, loc="upper left", ncols=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
